from interp.analyses import main

main()
