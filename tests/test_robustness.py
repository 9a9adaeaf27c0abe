"""research/notes/robustness.json (what research/experiment.py robustness wrote) has its schema, and every number of
the tables of research/notes/seeds.md and research/notes/causal.md is the JSON's value as printed (two decimals): the
pages cannot drift from the measurements. research.robustness band and research.screen on tiny inputs; a screen has
the schema of the committed ones (research/notes/acceptance.json, research/notes/grid-lr.json)."""
import json
import os
import re

import numpy as np
import pytest

from research import experiment
from evaluate import HELDOUT_SEEDS
from schema import assert_committed_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "research", "notes")
PAGES = ("seeds.md", "causal.md")  # the pages whose tables come from robustness*.json and probes*.json
ARMS = {"step0", "ce", "ce-masked", "ce-teacher-labels", "kd", "kd-masked", "kd-teacher-docmask"}


def load(name):
    with open(os.path.join(DOCS, name)) as f:
        return json.load(f)


def tables(md):
    """[(header cells, [row cells])] of every markdown table in the text."""
    out, lines = [], md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|( -+ \|)+$", lines[i + 1].strip()):
            if i > 0 and lines[i - 1].startswith("|"):
                continue
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip() for c in lines[j].strip().strip("|").split("|")])
                j += 1
            out.append(([c.strip() for c in line.strip().strip("|").split("|")], rows))
    return out


def printed(v):
    return "-" if v is None else f"{v:.2f}"


def results_files():
    """[(steps, robustness JSON, probes JSON or None)]: the recipe's (1,000 steps) and any shorter screen's."""
    out = []
    for name in sorted(os.listdir(DOCS)):
        m = re.fullmatch(r"robustness(-steps(\d+))?\.json", name)
        if m:
            probes = os.path.join(DOCS, name.replace("robustness", "probes"))
            out.append((int(m.group(2) or 1000), load(name), load(os.path.basename(probes))
                        if os.path.isfile(probes) else None))
    return out


def test_robustness_json_schema():
    files = results_files()
    assert files and files[0][0] in (1000, 250) and os.path.isfile(os.path.join(DOCS, "robustness.json"))
    for steps, res, _ in files:
        assert set(res) == {"criterion", "probe_seeds", "runs"}
        assert res["criterion"] == {"min_distance": 512, "step0_max": 0.3, "kd_min": 0.9, "ce_max": 0.3}
        assert res["probe_seeds"] == list(HELDOUT_SEEDS) and 0 not in res["probe_seeds"]  # 0: the selection seed
        seen = set()
        for r in res["runs"]:
            assert set(r) == {"phase1_seed", "phase2_seed", "arm", "distances", "kv", "in_doc"}
            assert isinstance(r["phase1_seed"], int) and isinstance(r["phase2_seed"], int) and r["arm"] in ARMS
            key = (r["phase1_seed"], r["phase2_seed"], r["arm"])
            assert key not in seen
            seen.add(key)
            assert r["distances"] == sorted(r["distances"]) and len(r["kv"]) == len(r["distances"])
            assert all(a is None or 0 <= a <= 1 for a in r["kv"]) and 0 <= r["in_doc"] <= 1
        for p1, p2, arm in seen:  # every combination with a trained arm has its starting point
            assert (p1, p2, "step0") in seen


def test_the_pages_tables_equal_the_json():
    files = {steps: (res, probes) for steps, res, probes in results_files()}
    with_probes = [p for _, p in files.values() if p is not None]
    files["-"] = (None, with_probes[0] if with_probes else None)  # teacher and step 0: trained by no arm
    md = "\n\n".join(open(os.path.join(DOCS, page)).read() for page in PAGES)
    checked = 0
    for head, rows in tables(md):
        dists = [int(h[2:]) for h in head if h.startswith("D=")]
        if head[:4] == ["steps", "phase-1 seed", "phase-2 seed", "arm"]:  # per-seed rows
            for cells in rows:
                runs = files[int(cells[0])][0]["runs"]
                (r,) = [r for r in runs
                        if (str(r["phase1_seed"]), str(r["phase2_seed"]), r["arm"]) == tuple(cells[1:4])]
                kv = dict(zip(r["distances"], r["kv"]))
                assert cells[4:] == [printed(kv[d]) for d in dists] + [printed(r["in_doc"])], cells
                checked += 1
        elif head[:3] == ["arm", "steps", "runs"]:  # per arm: mean over every seed combination
            for cells in rows:
                if cells[0] == "teacher":
                    t = [p for _, p in files.values() if p and "teachers" in p][0]["teachers"]["p0-s0"]  # held-out
                    kv = dict(zip(t["distances"], t["kv"]))
                    assert cells[3:] == [printed(kv[d]) for d in dists] + [printed(t["in_doc"])], cells
                else:
                    sel = [r for r in files[int(cells[1])][0]["runs"] if r["arm"] == cells[0]]
                    assert cells[2] == str(len(sel)), cells
                    mean = [float(np.mean([dict(zip(r["distances"], r["kv"]))[d] for r in sel])) for d in dists]
                    in_doc = float(np.mean([r["in_doc"] for r in sel]))
                    assert cells[3:] == [printed(m) for m in mean] + [printed(in_doc)], cells
                checked += 1
        elif head[:3] == ["model", "steps", "probe"]:  # position / needle rows from the probes JSON
            for cells in rows:
                probes = files[cells[1] if cells[1] == "-" else int(cells[1])][1]
                m = probes["models"].get(cells[0])
                if cells[2] == "needle":
                    nd = dict(zip(probes["needle_distances"], m["needle"]))
                    assert cells[3:] == [printed(nd[d]) for d in dists], cells
                elif cells[2] == "needle floor":
                    assert cells[3:] == [printed(probes["needle_floor"][str(d)]) for d in dists], cells
                else:  # "record at S": a row of the record-position x distance grid
                    s = probes["starts"].index(int(cells[2].split()[-1]))
                    grid = dict(zip(probes["distances"], m["position"][s]))
                    assert cells[3:] == [printed(grid[d]) for d in dists], cells
                checked += 1
        elif head[:3] == ["model", "steps", "local"]:  # answers at recurring keys: local / far-back / fresh
            for cells in rows:
                name, _, docmask = cells[0].partition(" (doc mask)")
                model = files[cells[1] if cells[1] == "-" else int(cells[1])][1]["models"][name]
                rec = model["recurring_docmask" if docmask == "" and cells[0] != name else "recurring"]
                assert cells[2:] == [printed(rec[k]) for k in ("local", "far_back", "fresh")], cells
                checked += 1
    assert checked >= sum(len(res["runs"]) for res, _ in files.values() if res)  # every run appears at least once


def test_seeds_md_pass_count_is_the_criterion_on_the_json():
    res = load("robustness.json")  # the recipe's runs (a shorter screen is not held to the criterion)
    with open(os.path.join(DOCS, "seeds.md")) as f:
        md = f.read()
    verdict = experiment.verdicts(res["runs"])
    decided = [ok for ok, _ in verdict.values() if ok is not None]
    m = re.search(r"Pass count: (\d+) of (\d+)", md)
    assert m and (int(m.group(1)), int(m.group(2))) == (sum(decided), len(decided))
    if decided:
        lo, hi = experiment.wilson_interval(sum(decided), len(decided))
        assert f"[{lo:.2f}, {hi:.2f}]" in md


@pytest.mark.parametrize("name", ["robustness.json", "seeds.md", "causal.md"])
def test_results_files_exist(name):
    assert os.path.isfile(os.path.join(DOCS, name))


def test_the_band_criterion_on_hand_made_rows():
    from research.robustness import BAND_CRITERION, band_verdict
    band = BAND_CRITERION["band"]

    def run(*values):
        return {"distances": band, "kv": list(values)}
    good = {"step0": run(*[0.05] * 7), "kd": run(*[1.0] * 7), "ce": run(0.1, 0.1, 0.1, 0.7, 0.7, 0.1, 0.1)}
    assert band_verdict(good) == (True, [])  # a CE alias bump at two distances does not decide: mean 0.27
    weak = dict(good, kd=run(1.0, 1.0, 0.89, 1.0, 1.0, 1.0, 1.0))
    assert band_verdict(weak) == (False, ["kd 0.89 at D=640"])
    close = dict(good, ce=run(*[0.75] * 7))
    assert band_verdict(close) == (False, ["ce band mean 0.75 within 0.3 of kd's 1.00"])
    high_start = dict(good, step0=run(0.31, *[0.0] * 6))
    assert band_verdict(high_start)[1] == ["step0 0.31 at D=512"]


def test_a_missing_band_distance_is_outside_the_bound():
    """research.screen.within_bound: an arm with a band distance not measured (None) does not keep its bound, for the
    CE twin as for step 0 and KD; the arms that were measured in full keep theirs."""
    from research.robustness import BAND_CRITERION
    from research.screen import within_bound
    band = BAND_CRITERION["band"]

    def run(*values):
        return {"distances": band, "kv": list(values)}
    good = {"step0": run(*[0.05] * 7), "kd": run(*[1.0] * 7), "ce": run(*[0.1] * 7)}
    assert all(within_bound(good, arm) for arm in ("step0", "kd", "ce"))
    for arm in ("step0", "kd", "ce"):
        holes = dict(good, **{arm: run(0.1, *[None] * 6)})  # measured at one band distance of seven
        assert not within_bound(holes, arm), arm
        assert all(within_bound(holes, other) for other in ("step0", "kd", "ce") if other != arm), arm


def test_the_band_command_scores_three_checkpoints_and_says_its_verdict(tmp_path, capsys):
    """Tiny untrained checkpoints under the names a combination's runs have: every arm scored at every band
    distance (an untrained KD student fails the criterion, and says where), the rows written as JSON."""
    import dataclasses

    import torch
    from model import GPT, GPTConfig, save_checkpoint
    from research import robustness
    torch.manual_seed(0)
    for name in ("phase1-b10000-s3", "phase2-kd-b10000-b500000-p3", "phase2-ce-b10000-b500000-p3"):
        cfg = GPTConfig(vocab_size=193, n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=1024)
        save_checkpoint({"model": GPT(cfg).state_dict(), "config": dataclasses.asdict(cfg), "step": 1,
                         "phase": "2", "done": True}, str(tmp_path / f"{name}.pt"))
    robustness.main(["band", "--dir", str(tmp_path), "--phase1-seed", "3", "--n-windows", "1"])
    out = capsys.readouterr().out
    assert "fail: kd " in out and "at D=512" in out
    rows = json.loads((tmp_path / "band-p3-s0.json").read_text())
    assert [r["arm"] for r in rows] == ["step0", "kd", "ce"]
    assert all(set(robustness.BAND_CRITERION["band"]) <= set(r["distances"]) for r in rows)
    assert all(0 <= v <= 1 for r in rows for v in r["kv"])


def test_the_band_command_finds_a_variants_runs_and_scores_the_selection_probe_alone(tmp_path, capsys):
    """A screen: a KD-only variant run (no CE twin) under its suffixed name, scored on probe seed 0 only; the rows
    go to their own file, next to (not over) the held-out ones, and no verdict is claimed without the CE twin."""
    import dataclasses

    import torch
    from model import GPT, GPTConfig, save_checkpoint
    from research import robustness
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=193, n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=1024)
    save_checkpoint({"model": GPT(cfg).state_dict(), "config": dataclasses.asdict(cfg), "step": 1, "phase": "2",
                     "done": True}, str(tmp_path / "phase2-kd-b10000-b500000-p6-rec0.1.pt"))
    robustness.main(["band", "--dir", str(tmp_path), "--phase1-seed", "6", "--variant", "rec0.1", "--arms", "kd",
                     "--probe-seeds", "0", "--n-windows", "1"])
    out = capsys.readouterr().out
    assert "pass" not in out and "fail" not in out
    rows = json.loads((tmp_path / "band-p6-rec0.1-s0-probe0.json").read_text())
    assert [r["arm"] for r in rows] == ["kd"] and len(rows[0]["kv"]) == len(rows[0]["distances"])
    with pytest.raises(SystemExit):  # the recipe's run (no suffix) is not there: one error line
        robustness.main(["band", "--dir", str(tmp_path), "--phase1-seed", "6", "--arms", "kd", "--n-windows", "1"])


def test_the_position_summary_reads_the_cells_it_names():
    """A hand-made position grid: long range only from records at the window's start (1.0 there, 0.2 from records
    at 128-384), late records at 0.5; the summary's means take exactly those cells and skip the unmeasured ones."""
    from research.screen import position_summary, positions_markdown
    starts, dists = [0, 128, 256, 384, 512, 640, 768, 896], [16, 64, 256, 512, 768, 900, 1000]
    fits = lambda st, d: st + d < 1024  # noqa: E731 (as the probe: None where no query of the band fits)
    grid = [[None if not fits(st, d) else 1.0 if st == 0 else 0.2 if d >= 512 else 0.5 if st >= 512 else 0.9
             for d in dists] for st in starts]
    row = {"phase1_seed": 3, "arm": "kd", "starts": starts, "distances": dists, "kv": grid}
    p = position_summary(row)
    assert p["start"] == 1.0 and p["later"] == pytest.approx(0.2) and p["late_records"] == 0.5
    assert p["weakest"] == (128, 512, 0.2) and p["only_start"]
    grid[1][3] = grid[2][3] = grid[3][3] = grid[1][4] = 0.6  # later records retrieved too: not only the start
    assert not position_summary(row)["only_start"]
    assert "| 3 | KD student | 1.00 | 0.60 | 0.50 | 0.50 (512, 16) | no |" in positions_markdown({"positions": [row]})


def test_the_position_probe_is_measured_once_per_student_and_kept(tmp_path, monkeypatch):
    """A student's KD run and CE twin (random tiny models of a 1024-token window): one grid each, None exactly
    where a record band plus its distance leaves the window, written to positions-pN-s0.json and read back
    from there, not measured again."""
    import dataclasses
    import model as model_module
    from data import TaskSpec
    from model import GPT, GPTConfig, save_checkpoint
    from research import robustness, screen
    cfg = GPTConfig(vocab_size=TaskSpec().vocab_size, d_model=16, n_head=2, n_kv_head=2, n_layer=1, max_seq_len=1024)
    for arm, path in robustness.student_paths(str(tmp_path), 4).items():
        save_checkpoint({"model": GPT(cfg).state_dict(), "config": dataclasses.asdict(cfg), "step": 1, "done": True},
                        path)
    monkeypatch.setattr(robustness, "SWEEP_WINDOWS", 1)  # one window per cell and probe seed: quick
    rows = screen.student_positions(str(tmp_path), 4)
    assert [(r["phase1_seed"], r["arm"]) for r in rows] == [(4, "kd"), (4, "ce")]
    for r in rows:
        assert len(r["kv"]) == len(r["starts"]) and all(len(a) == len(r["distances"]) for a in r["kv"])
        for st, accs in zip(r["starts"], r["kv"]):
            assert [a is None for a in accs] == [st + d >= 1024 for d in r["distances"]]
    load = model_module.load_model
    monkeypatch.setattr(model_module, "load_model", lambda *a: pytest.fail("measured twice"))
    assert screen.student_positions(str(tmp_path), 4) == rows
    monkeypatch.setattr(model_module, "load_model", load)  # a retrained (here: unfinished) run is measured again
    kd = robustness.student_paths(str(tmp_path), 4)["kd"]
    save_checkpoint({"model": GPT(cfg).state_dict(), "config": dataclasses.asdict(cfg), "step": 1, "done": False}, kd)
    with pytest.raises(ValueError, match="unfinished run"):
        screen.student_positions(str(tmp_path), 4)


def test_the_screen_command_gathers_each_students_phase1_and_band_rows(tmp_path, capsys):
    """Hand-made run files: a student that passed its 16-token stage at step 3 and went on to the band, one stopped
    inside that stage (no end-of-run JSON, no phase 2): the stage step is counted from the step lines alone (eval
    lines have no stage), D = 16 read from the end-of-run table, and the table says which went on."""
    from research import robustness, screen as screen_module
    band = robustness.BAND_CRITERION["band"]

    def steps(n16, n_main):
        lines = [{"step": i + 1, "stage": "curriculum-16"} for i in range(n16)] + [{"step": 2, "eval": {}}]
        return "\n".join(json.dumps(x) for x in lines + [{"step": n16 + 1, "stage": "main"}] * n_main) + "\n"
    (tmp_path / "phase1-b10000-s5.jsonl").write_text(steps(3, 2))
    (tmp_path / "phase1-b10000-s5.json").write_text(json.dumps({"run": "phase1-b10000-s5", "speed": {
        "train_seconds": 90}, "results": {"phase1-b10000-s5": {"kv": {"16": 0.9}}}}))
    (tmp_path / "phase1-b10000-s6.jsonl").write_text(steps(7, 0))
    rows = [{"phase1_seed": 5, "phase2_seed": 0, "arm": a, "distances": band, "kv": [v] * 7, "in_doc": 1.0}
            for a, v in (("step0", 0.0), ("kd", 1.0), ("ce", 0.2))]
    (tmp_path / "band-p5-s0.json").write_text(json.dumps(rows))
    rows1 = [{**r, "phase2_seed": 1, "kv": [0.5] * 7} if r["arm"] == "kd" else {**r, "phase2_seed": 1} for r in rows]
    (tmp_path / "band-p5-s1.json").write_text(json.dumps(rows1))  # phase-2 seed 1 of the same student
    (tmp_path / "band-p55-s0.json").write_text(json.dumps(rows))  # another student's file: not gathered for 5
    out = tmp_path / "screen.json"
    screen_module.main(["--dir", str(tmp_path), "--phase1-seeds", "5", "6", "--out", str(out)])
    screen = json.loads(out.read_text())
    assert screen["students"] == [
        {"phase1_seed": 5, "stage16_step": 3, "stage16_cap": 8000, "d16": 0.9, "phase1_minutes": 1.5},
        {"phase1_seed": 6, "stage16_step": None, "stage16_cap": 8000, "d16": None, "stopped_at": 7}]
    assert screen["runs"] == rows + rows1 and screen["criterion"] == robustness.BAND_CRITERION
    assert "positions" not in screen  # no position probe measured: the key stays out
    table = capsys.readouterr().out
    assert "| 5 | 3 | 0.90 | yes | 0.00 | 1.00 | 1.00 | 0.20 | pass |" in table
    assert "| 5, phase-2 seed 1 | 3 | 0.90 | yes | 0.00 | 0.50 | 0.50 | 0.20 | fail: kd 0.50 at D=512;" in table
    assert "| 6 | not by step 7 (stopped) | - | no | - | - | - | - | not run |" in table
    with pytest.raises(SystemExit):  # a student with no run files: one error line, nothing written
        screen_module.main(["--dir", str(tmp_path), "--phase1-seeds", "9", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_the_step0_check_reads_the_band_max_on_the_selection_probe(tmp_path, capsys):
    """Hand-made files: two accepted students whose selection-probe step-0 band rows peak at 0.25 (inside the band)
    and 0.36 (outside the bound), with 0.9 at D = 256 outside the band to show that only band cells count; the
    table grows the two check columns, and the check turns down only the second student."""
    from research import robustness, screen as screen_module
    distances = sorted(robustness.BAND_CRITERION["band"] + [256, 900])
    for seed, peak in ((5, 0.25), (6, 0.36)):
        lines = [{"step": i + 1, "stage": "curriculum-16"} for i in range(3)] + [{"step": 4, "stage": "main"}]
        (tmp_path / f"phase1-b10000-s{seed}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (tmp_path / f"phase1-b10000-s{seed}.json").write_text(json.dumps({"run": f"phase1-b10000-s{seed}", "speed": {
            "train_seconds": 60}, "results": {f"phase1-b10000-s{seed}": {"kv": {"16": 0.95}}}}))
        kv = [{256: 0.9, 768: peak}.get(d, 0.05) for d in distances]
        (tmp_path / f"band-p{seed}-s0-probe0.json").write_text(json.dumps([{
            "phase1_seed": seed, "phase2_seed": 0, "arm": "step0", "distances": distances, "kv": kv, "in_doc": 0.1}]))
    out = tmp_path / "screen.json"
    screen_module.main(["--dir", str(tmp_path), "--phase1-seeds", "5", "6", "--out", str(out)])
    students = json.loads(out.read_text())["students"]
    assert [s["step0_selection"] for s in students] == [0.25, 0.36]
    table = capsys.readouterr().out
    assert "step 0, band max, selection probe | accepted with the step-0 check |" in table
    assert "| 5 | 3 | 0.95 | yes | 0.25 | yes | - | - | - | - | not run |" in table
    assert "| 6 | 3 | 0.95 | yes | 0.36 | no | - | - | - | - | not run |" in table


def test_the_screen_grows_by_update_and_keeps_the_students_it_already_had(tmp_path, capsys):
    """--update: a screen of students 5 and 6 (hand-made) grown from another folder by students 6 (measured again)
    and 7: 5's rows stay, 6's are replaced, 7's are added, all in seed order; a screen with another criterion is
    refused with one error line and left as it was."""
    from research import robustness, screen as screen_module
    band = robustness.BAND_CRITERION["band"]

    def band_rows(seed, kd):
        return [{"phase1_seed": seed, "phase2_seed": 0, "arm": a, "distances": band, "kv": [v] * 7, "in_doc": 1.0}
                for a, v in (("step0", 0.0), ("kd", kd), ("ce", 0.2))]
    old = screen_module.screen_json(str(tmp_path), [], "first folder", ["cmd A"])
    old["students"] = [{"phase1_seed": s, "stage16_step": 3, "stage16_cap": 8000, "d16": 0.9} for s in (5, 6)]
    old["runs"] = band_rows(5, 1.0) + band_rows(6, 0.5)
    old["positions"] = [{"phase1_seed": 6, "arm": "kd"}]
    out = tmp_path / "screen.json"
    out.write_text(json.dumps(old))
    more = tmp_path / "more"
    more.mkdir()
    for seed in (7, 6):
        lines = [{"step": i + 1, "stage": "curriculum-16"} for i in range(4)] + [{"step": 5, "stage": "main"}]
        (more / f"phase1-b10000-s{seed}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (more / f"phase1-b10000-s{seed}.json").write_text(json.dumps({"run": f"phase1-b10000-s{seed}", "speed": {
            "train_seconds": 60}, "results": {f"phase1-b10000-s{seed}": {"kv": {"16": 0.95}}}}))
        (more / f"band-p{seed}-s0.json").write_text(json.dumps(band_rows(seed, 0.95)))
    masked = [{**r, "arm": r["arm"] + "-masked"} for r in band_rows(7, 0.5)[1:]]  # band --arms kd-masked ce-masked
    (more / "band-p7-s0-kd-masked.ce-masked.json").write_text(json.dumps(masked))
    (more / "band-p7-s0-probe0.json").write_text(json.dumps(band_rows(7, 0.95)[:1]))  # the step-0 check: not one
    screen_module.main(["--dir", str(more), "--phase1-seeds", "7", "6", "--out", str(out), "--update"])
    screen = json.loads(out.read_text())
    assert screen["ablations"] == masked
    assert screen_module.ablations_markdown(screen).count("\n| 7 |") == 5  # step 0, KD, CE, then the two ablations
    assert [(s["phase1_seed"], s["stage16_step"]) for s in screen["students"]] == [(5, 3), (6, 4), (7, 4)]
    assert screen["runs"] == band_rows(5, 1.0) + band_rows(6, 0.95) + band_rows(7, 0.95)
    assert "positions" not in screen  # 6's position rows belonged to its replaced runs
    assert screen["what"] == "first folder" and screen["commands"] == ["cmd A"]  # none given: kept
    assert "| 5 | 3 | 0.90 | yes | - | no | 0.00 | 1.00 | 1.00 | 0.20 | pass |" in capsys.readouterr().out  # 7: checked
    screen_module.main(["--dir", str(more), "--phase1-seeds", "6", "--out", str(out), "--update"])
    assert json.loads(out.read_text())["ablations"] == masked  # another student updated: 7's ablations stay
    other = {**screen, "criterion": {**screen["criterion"], "kd_min": 0.5}}
    out.write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        screen_module.main(["--dir", str(more), "--phase1-seeds", "7", "--out", str(out), "--update"])
    assert json.loads(out.read_text()) == other


def write_phase1(folder, seed, stage16_steps, finished=True):
    """A phase-1 student's run files as train.py leaves them: the step log (its 16-token stage took
    `stage16_steps` steps) and, when it finished, the end-of-run JSON with D = 16."""
    lines = [{"step": i + 1, "stage": "curriculum-16"} for i in range(stage16_steps)]
    lines += [{"step": stage16_steps + 1, "stage": "main"}] if finished else []
    (folder / f"phase1-b10000-s{seed}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if finished:
        (folder / f"phase1-b10000-s{seed}.json").write_text(json.dumps({"run": f"phase1-b10000-s{seed}", "speed": {
            "train_seconds": 60}, "results": {f"phase1-b10000-s{seed}": {"kv": {"16": 0.95}}}}))


def write_band(path, seed, arms, value):
    """Band rows of one student as research.robustness band writes them."""
    from research.robustness import BAND_CRITERION
    distances = sorted(BAND_CRITERION["band"] + [256, 900])
    rows = [{"phase1_seed": seed, "phase2_seed": 0, "arm": a, "distances": distances, "kv": [value] * len(distances),
             "in_doc": 0.5} for a in arms]
    path.write_text(json.dumps(rows))


def test_a_screen_has_the_schema_of_the_committed_screens(tmp_path, monkeypatch):
    """A student with its band rows: the acceptance screen; then with the step-0 check, an ablation, a stopped
    student and the position probe of tiny 1024-token checkpoints (fewer cells: quick): the grid's screen."""
    import dataclasses
    from data import TaskSpec
    from model import GPT, GPTConfig, save_checkpoint
    from research import robustness, screen
    write_phase1(tmp_path, 5, 3)
    write_band(tmp_path / "band-p5-s0.json", 5, ["step0", "kd", "ce"], 0.5)
    screen.main(["--dir", str(tmp_path), "--phase1-seeds", "5", "--out", str(tmp_path / "acceptance.json")])
    assert_committed_schema("research.screen", tmp_path / "acceptance.json", "acceptance")
    write_phase1(tmp_path, 6, 7, finished=False)
    write_band(tmp_path / "band-p5-s0-probe0.json", 5, ["step0"], 0.1)
    write_band(tmp_path / "band-p5-s0-kd-masked.json", 5, ["kd-masked"], 0.3)
    cfg = GPTConfig(vocab_size=TaskSpec().vocab_size, d_model=16, n_head=2, n_kv_head=2, n_layer=1, max_seq_len=1024)
    for arm in ("kd", "ce"):
        save_checkpoint({"model": GPT(cfg).state_dict(), "config": dataclasses.asdict(cfg), "step": 1, "done": True},
                        robustness.student_paths(str(tmp_path), 5)[arm])
    monkeypatch.setattr(robustness, "SWEEP_WINDOWS", 1)
    monkeypatch.setattr(robustness, "SWEEP_STARTS", (0, 896))
    monkeypatch.setattr(robustness, "SWEEP_DISTANCES", (16, 512))
    out = tmp_path / "grid.json"
    screen.main(["--dir", str(tmp_path), "--phase1-seeds", "5", "6", "--positions", "--out", str(out)])
    assert {"positions", "ablations"} <= set(json.loads(out.read_text()))
    assert_committed_schema("research.screen", out, "grid-lr")


def test_the_band_finds_every_arms_run_under_the_name_train_py_gives_it():
    """research.robustness.student_paths names each --arm's phase-2 run (ablations included, another phase-1 and
    phase-2 seed, a variant) exactly as python -m variants does, so that `band --arms kd-masked ...` scores the run
    trained."""
    from config import build_parser, resolve
    from research import robustness
    from variants.arms import ARMS
    from variants.train import Variants, parse
    for p1, p2, variant in ((0, 0, []), (17, 1, []), (17, 0, ["--recurrence", "0"])):
        paths = robustness.student_paths("out", p1, p2, "-rec0" if variant else "")
        assert set(paths) == {"step0", *ARMS}
        for arm in ARMS:
            argv = ["--phase", "2", "--rope-base", "500000", "--phase1-seed", str(p1), "--seed", str(p2), "--arm", arm]
            opts, rest = parse(argv + variant)
            name = resolve(build_parser().parse_args(rest), Variants(opts)).run_name
            assert paths[arm] == os.path.join("out", name + ".pt")


def test_the_grid_headline_counts_accepted_students_only_and_their_combinations():
    """A hand-made grid: a rejected student (not in the rows), an accepted one that passes, an accepted one with two
    phase-2 seeds that fails on step 0 with both; an ablation row from the passing one."""
    from research.screen import grid_headline_markdown
    band = [256, 512, 576, 640, 704, 768, 832, 896, 900]

    def row(seed, p2, arm, v):
        return {"phase1_seed": seed, "phase2_seed": p2, "arm": arm, "distances": band, "kv": [v] * 9, "in_doc": 0.5}
    students = [{"phase1_seed": 0, "stage16_step": 500, "d16": 0.5},  # D = 16 below 0.85: rejected
                {"phase1_seed": 1, "stage16_step": 500, "d16": 0.95}, {"phase1_seed": 2, "stage16_step": 900, "d16": 0.9}]
    runs = [row(0, 0, "step0", 0.0), row(0, 0, "kd", 0.0), row(0, 0, "ce", 0.0),
            row(1, 0, "step0", 0.1), row(1, 0, "kd", 1.0), row(1, 0, "ce", 0.2)]
    runs += [r for p2 in (0, 1) for r in (row(2, p2, "step0", 0.4), row(2, p2, "kd", 0.9), row(2, p2, "ce", 0.1))]
    table = grid_headline_markdown({"students": students, "runs": runs, "ablations": [row(1, 0, "kd-masked", 0.3)]})
    assert "| step 0 (phase 1 + base 5e5) | 2 (3) | 0.30 | 0.30 |" in table  # (0.1 + 0.4 + 0.4) / 3
    assert table.split("\n")[2].endswith("| 1 of 3 |")  # seed 2's step 0 is above 0.3 with both phase-2 seeds
    assert "| KD student (0.1 CE + 0.9 KD) | 2 (3) | 0.93 |" in table and table.split("\n")[3].endswith("| 3 of 3 |")
    assert "| KD without the far-back targets | 1 (1) | 0.30 |" in table
    lo, hi = experiment.wilson_interval(1, 2)
    assert f"**1 of 2** accepted phase-1 students pass (phase-2 seed 0; Wilson 95% interval [{lo:.2f}, {hi:.2f}]); " \
           "1 of 3 seed combinations." in table
