from variants.train import main

main()
