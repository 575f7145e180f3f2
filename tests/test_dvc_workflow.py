"""DVC as its users work with it, through the `dvc` CLI on the tiny project: the same bytes on the same
machine, plots for any params, the run-cache, experiments shared through a git remote, the model registry,
a hand-run training recorded with `dvc commit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_pipeline import make_project, reproduced, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny project after one full `dvc repro`, committed, its DVC data pushed to its local remote."""
    repo = reproduced(tmp_path_factory.mktemp("workflow"))
    run("dvc", "push", cwd=repo)
    return repo


def tracked_by_git(repo: Path, rev: str | None = None) -> dict[str, bytes]:
    """The bytes of dvc.lock (which holds every DVC output's hash) and of every file under metrics/ (which git
    keeps): in the work tree, or as committed in `rev`."""
    if rev is None:
        names = ["dvc.lock", *(str(p.relative_to(repo)) for p in (repo / "metrics").rglob("*") if p.is_file())]
        return {name: (repo / name).read_bytes() for name in names}
    names = run("git", "ls-tree", "-r", "--name-only", rev, "dvc.lock", "metrics", cwd=repo).stdout.split()
    return {name: run("git", "show", f"{rev}:{name}", cwd=repo).stdout.encode() for name in names}


def test_a_fresh_copy_on_the_same_machine_writes_the_same_bytes_and_its_lock_names_only_stages(project, tmp_path):
    """Two fresh copies, the same params, one machine: dvc.lock (every output's hash) and the metrics are the
    same bytes. The lock came from the checkout, and it holds no stage that dvc.yaml lacks."""
    again = make_project(tmp_path / "socmap", tmp_path / "storage")
    run("dvc", "repro", cwd=again)
    mine, theirs = tracked_by_git(again), tracked_by_git(project, "HEAD")
    assert sorted(mine) == sorted(theirs) and len(mine) > 10
    assert [name for name in mine if mine[name] != theirs[name]] == []
    stages = run("dvc", "stage", "list", "--name-only", cwd=again).stdout.split()
    assert sorted(yaml.safe_load(mine["dvc.lock"])["stages"]) == sorted(stages)


def plots_shown(repo: Path) -> dict:
    """`dvc plots show --json`: {"data": {plot id: ...}}, with "errors": [...] when a plot does not load."""
    return json.loads(run("dvc", "plots", "show", "--json", cwd=repo).stdout)


def curve_runs(shown: dict) -> set[str]:
    """The runs the training-curves plot draws a line for."""
    return {row["run"] for row in shown["data"]["Training curves per run"][0]["content"]["data"]["values"]}


def test_plots_load_for_any_params_and_setting_them_back_restores_every_stage_from_the_run_cache(project):
    shown = plots_shown(project)
    assert shown.get("errors") is None and curve_runs(shown) == {"0", "1"}  # train.num_runs 2
    other = run("dvc", "exp", "run", "-n", "kfold3", "-S", "train.lr=0.004", "-S", "split.mode=kfold",
                "-S", "split.folds=3", "-S", "evaluate.kriging=none", cwd=project)
    assert "Running stage 'train'" in other.stdout
    shown = plots_shown(project)
    assert shown.get("errors") is None and curve_runs(shown) == {str(k) for k in range(6)}  # 3 folds × 2 runs
    assert shown["data"]["plots/evaluate/variogram.png"]  # written, saying that nothing was kriged

    committed = yaml.safe_load(run("git", "show", "HEAD:params.yaml", cwd=project).stdout)
    back = run("dvc", "exp", "run", "-n", "back", "-S", f"train.lr={committed['train']['lr']}",
               "-S", "split.mode=holdout", "-S", f"split.folds={committed['split']['folds']}",
               "-S", "evaluate.kriging=log", cwd=project)
    for stage in ("split", "train", "baselines", "evaluate", "bundle", "map"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in back.stdout, back.stdout
    assert "Running stage" not in back.stdout
    assert (project / "dvc.lock").read_text() == run("git", "show", "HEAD:dvc.lock", cwd=project).stdout


def experiment_names(repo: Path) -> list[str]:
    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=repo).stdout)
    return [e["name"] for rev in shown for e in (rev.get("experiments") or [])]


def test_experiments_travel_through_a_git_remote_and_become_branches(project, tmp_path):
    """`dvc exp push origin` sends an experiment's git ref and its DVC data; `dvc exp pull origin` in another
    clone brings both; `dvc exp branch` makes it a branch whose outputs check out whole. The experiment is
    the one with 3 folds of the test above."""
    assert "kfold3" in experiment_names(project)
    run("git", "init", "-q", "--bare", "-b", "main", str(tmp_path / "origin.git"), cwd=tmp_path)
    run("git", "remote", "add", "origin", str(tmp_path / "origin.git"), cwd=project)
    run("git", "push", "-q", "origin", "main", cwd=project)
    assert "Pushed experiment kfold3" in run("dvc", "exp", "push", "origin", "kfold3", cwd=project).stdout
    assert run("dvc", "exp", "list", "--name-only", "origin", cwd=project).stdout.split() == ["kfold3"]

    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(tmp_path / "origin.git"), str(clone), cwd=tmp_path)
    assert experiment_names(clone) == []
    run("dvc", "exp", "pull", "origin", "kfold3", cwd=clone)
    assert experiment_names(clone) == ["kfold3"]
    run("dvc", "exp", "branch", "kfold3", "kfold3-branch", cwd=clone)
    run("git", "checkout", "-q", "kfold3-branch", cwd=clone)
    run("dvc", "checkout", cwd=clone)  # from the cache the pull filled: no `dvc pull`
    assert yaml.safe_load((clone / "params.yaml").read_text())["split"]["folds"] == 3
    runs = [f"run_{k}.pt" for k in range(3 * 2)]  # 3 folds × train.num_runs 2
    assert sorted(p.name for p in (clone / "models").iterdir()) == ["best.pt", *runs]
    assert json.loads((clone / "metrics/evaluate/metrics.json").read_text())["mode"] == "kfold"
    assert json.loads(run("dvc", "status", "--json", cwd=clone).stdout) == {}


def test_the_registry_entry_is_the_ensemble_the_map_reads_and_downloads_by_version_and_stage(project, tmp_path):
    run("git", "checkout", "-q", "--", ".", cwd=project)
    run("dvc", "checkout", cwd=project)
    artifact = yaml.safe_load((project / "dvc.yaml").read_text())["artifacts"]["soc-ensemble"]
    assert artifact["type"] == "model" and artifact["path"] == "data/ensemble" and artifact["labels"]
    ensemble = project / artifact["path"]
    for source in ("models/run_0.pt", "models/run_1.pt", "models/best.pt", "data/evaluate/calibration.json",
                   "data/evaluate/kriging.npz", "data/evaluate/applicability.npz",
                   "data/evaluate/error_correlation.json"):  # what the map stage reads, the same bytes
        assert (ensemble / Path(source).name).read_bytes() == (project / source).read_bytes(), source
    assert len(list(ensemble.iterdir())) == 7

    run("gto", "register", "soc-ensemble", "--version", "v0.1.0", cwd=project)
    run("gto", "assign", "soc-ensemble", "--version", "v0.1.0", "--stage", "production", cwd=project)
    assert run("git", "tag", cwd=project).stdout.split() == ["soc-ensemble#production#1", "soc-ensemble@v0.1.0"]
    for how, out in ((["--rev", "v0.1.0"], "by-version"), (["--stage", "production"], "by-stage")):
        run("dvc", "artifacts", "get", str(project), "soc-ensemble", *how, "-o", out, cwd=tmp_path)
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == sorted(p.name for p in ensemble.iterdir())
        assert (tmp_path / out / "kriging.npz").read_bytes() == (ensemble / "kriging.npz").read_bytes()


def test_a_hand_run_watched_training_is_recorded_with_dvc_commit_and_changes_no_output(project):
    """`socmap train` run by hand (as on several machines), with train.monitor on, then `dvc commit`: the
    outputs are the same bytes, the lock records the param, nothing is left to rerun; the report lies
    outside git and DVC."""
    run("git", "checkout", "-q", "--", ".", cwd=project)
    run("dvc", "checkout", cwd=project)
    before = tracked_by_git(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["monitor"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("socmap", "train", cwd=project)
    status = json.loads(run("dvc", "status", "--json", cwd=project).stdout)
    assert status == {"train": [{"changed deps": {"params.yaml": {"train.monitor": "modified"}}}]}
    run("dvc", "commit", "--force", "train", cwd=project)
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}
    after = tracked_by_git(project)
    assert [name for name in before if before[name] != after[name]] == ["dvc.lock"]
    lock = {stage: yaml.safe_load(text)["stages"]["train"] for stage, text in (("before", before["dvc.lock"]),
                                                                                 ("after", after["dvc.lock"]))}
    assert lock["before"]["outs"] == lock["after"]["outs"]
    assert lock["after"]["params"]["params.yaml"]["train.monitor"] is True
    assert "system/cpu/usage (%)" in (project / "monitor/train/report.html").read_text()
    assert run("git", "status", "--porcelain", cwd=project).stdout.split() == ["M", "dvc.lock", "M", "params.yaml"]
