"""The DVC workflow end to end, through the real `dvc` CLI, in a temporary git copy of the project
with a tiny world: repro, no-op repro, experiments, the queue, exp show, and remote round trips."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml

from socmap import paths
from socmap.config import params_to_dict

from conftest import ROOT, TINY_WORLD, tiny_params

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
OUTPUTS = ["data/synthetic/points.csv", "data/processed/patches.npy", "data/processed/truth.parquet",
           "data/splits/split.parquet", "models/run_0.pt", "models/best.pt", "data/ensemble/kriging.npz",
           "data/maps/soc_2020.tif"]


def run(*cmd: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command as a user would, with the project's venv first on PATH."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.org", **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def tiny_project_params() -> dict:
    """params.yaml of the tiny world, with data.* at the default data/synthetic paths."""
    raw = params_to_dict(tiny_params(Path("data/synthetic")))
    raw["data"]["rasters"]["dir"] = "data/synthetic/rasters"
    raw["data"]["points"]["path"] = "data/synthetic/points.csv"
    raw["split"]["test_block_km"] = 5.0
    raw["train"]["epochs"] = 2
    return raw


def make_project(where: Path, storage: Path) -> Path:
    """A git repo holding the project's files (as in the work tree) and the tiny params."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and (name.startswith(f"{paths.REGION}/")
                                        or not name.startswith(("data/", "models/", "plots/"))):
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, where / name)
    (where / "params.yaml").write_text(yaml.safe_dump(tiny_project_params(), sort_keys=False))
    run("git", "init", "-q", "-b", "main", cwd=where)
    run("dvc", "remote", "add", "-f", "-d", "local", str(storage), cwd=where)
    run("git", "add", "-A", cwd=where)
    run("git", "commit", "-qm", "tiny socmap", cwd=where)
    return where


def reproduced(root: Path) -> Path:
    """The tiny project under `root` (its DVC remote beside it) after one full `dvc repro`, committed."""
    repo = make_project(root / "socmap", root / "storage")
    run("dvc", "repro", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "repro", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny project after one full `dvc repro`, committed."""
    return reproduced(tmp_path_factory.mktemp("project"))


def test_repro_writes_every_stage_and_a_second_repro_does_nothing(project):
    for name in OUTPUTS:
        assert (project / name).is_file(), name
    metrics = json.loads((project / "metrics/evaluate/metrics.json").read_text())
    assert {"r2", "rmse", "picp"} <= set(metrics)
    assert run("git", "status", "--porcelain", cwd=project).stdout == ""  # every output is in DVC or git
    again = run("dvc", "repro", cwd=project)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date." in again.stdout
    assert json.loads(run("dvc", "status", "--json", cwd=project).stdout) == {}


def test_push_then_pull_into_a_fresh_clone(project, tmp_path):
    run("dvc", "push", cwd=project)
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    run("dvc", "pull", cwd=clone)
    for name in OUTPUTS:
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name
    assert json.loads(run("dvc", "status", "--json", cwd=clone).stdout) == {}
    assert "Running stage" not in run("dvc", "repro", cwd=clone).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    """A local S3-compatible server (moto), with a bucket, on 127.0.0.1."""
    port = free_port()
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        import boto3

        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in env.items()
                             if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1").create_bucket(Bucket="socmap")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(0.1)
        yield endpoint, env
    finally:
        server.terminate()
        server.wait(10)


def test_s3_remote_round_trip(project, tmp_path, s3_server):
    endpoint, env = s3_server
    run("dvc", "remote", "add", "-f", "s3", "s3://socmap/cache", cwd=project)
    run("dvc", "remote", "modify", "s3", "endpointurl", endpoint, cwd=project)
    run("dvc", "push", "-r", "s3", cwd=project, env=env)
    run("git", "add", "-A", cwd=project)
    run("git", "commit", "-qm", "s3 remote", cwd=project)
    clone = tmp_path / "clone"
    run("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    run("dvc", "pull", "-r", "s3", cwd=clone, env=env)
    for name in OUTPUTS:
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name


def test_changing_the_loss_reruns_train_evaluate_and_map_only(project):
    """The forests (the baselines stage) read no train.* key: they come from the cache."""
    result = run("dvc", "exp", "run", "-S", "train.loss_type=mse", "-n", "mse", cwd=project)
    ran = {stage for stage in ("simulate", "sample", "split", "train", "baselines", "evaluate", "map")
           if f"Running stage '{stage}'" in result.stdout}
    assert ran == {"train", "evaluate", "map"}, result.stdout
    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=project).stdout)
    text = json.dumps(shown)
    assert '"mse"' in text and "r2" in text


def test_queue_of_two_with_two_workers(project):
    run("dvc", "exp", "run", "--queue", "-S", "train.loss_type=l1,composite_l1", cwd=project)
    run("dvc", "queue", "start", "-j", "2", cwd=project)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run("dvc", "queue", "status", cwd=project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status + "".join(
        p.read_text() for p in (project / ".dvc/tmp/exps/celery").glob("*.out"))
    assert status.count("Success") >= 2, status
    rows = run("dvc", "exp", "show", "--csv", "--param-deps", cwd=project).stdout
    assert "composite_l1" in rows and ",l1," in rows
    header = rows.splitlines()[0].split(",")
    assert {"r2", "rmse", "picp", "val_r2_mean", "train.loss_type"} <= set(header)

    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=project).stdout)
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    best = max(experiments, key=lambda e: e["revs"][0]["data"]["metrics"]["metrics/evaluate/metrics.json"]
               ["data"]["r2"])["name"]
    diff = run("dvc", "plots", "diff", experiments[0]["name"], experiments[1]["name"], "--json", cwd=project)
    assert "Predicted vs observed (test, g/kg)" in diff.stdout and "Test error by survey year" in diff.stdout
    run("dvc", "exp", "apply", best, cwd=project)
    applied = yaml.safe_load((project / "params.yaml").read_text())["train"]["loss_type"]
    assert applied in {"mse", "l1", "composite_l1"}
    run("dvc", "push", cwd=project)
    assert json.loads(run("dvc", "status", "--cloud", "--json", cwd=project).stdout) == {}


def test_each_world_is_a_stage_of_its_own_that_its_own_settings_rerun(tmp_path):
    """simulate.worlds: each name is a stage writing data/<name>/ and plots/<name>/ with its overrides of
    simulate.*; a change of one world's settings reruns that world only, a change of simulate.* every one."""
    repo = make_project(tmp_path / "socmap", tmp_path / "storage")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["simulate"]["worlds"] = {"synthetic": {}, "steep": {"context_km": 9, "aspect_effect": 0.2}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = run("dvc", "stage", "list", "--name-only", cwd=repo).stdout.split()
    assert stages[:2] == ["simulate@synthetic", "simulate@steep"]
    run("dvc", "repro", "simulate@synthetic", "simulate@steep", cwd=repo)
    for world in ("synthetic", "steep"):
        assert (repo / f"data/{world}/points.csv").is_file() and (repo / f"plots/{world}/land_cover.png").is_file()
    synthetic, steep = (pd.read_csv(repo / f"data/{world}/points.csv") for world in ("synthetic", "steep"))
    sites = ["POINTID", "GPS_LONG", "GPS_LAT", "year"]
    assert synthetic[sites].equals(steep[sites]) and not synthetic["OC"].equals(steep["OC"])  # same sites, other SOC
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["simulate@steep"]
    assert [out["path"] for out in lock["outs"]] == ["data/steep", "plots/steep"]
    assert lock["params"]["params.yaml"]["simulate.worlds.steep"] == {"context_km": 9, "aspect_effect": 0.2}

    def stale_worlds(**change) -> set[str]:
        edited = yaml.safe_load((repo / "params.yaml").read_text())
        for key, value in change.items():
            node = edited["simulate"]
            *parents, last = key.split(".")
            for part in parents:
                node = node[part]
            node[last] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        status = json.loads(run("dvc", "status", "--json", cwd=repo).stdout)
        return {stage for stage in status if stage.startswith("simulate@")}

    assert stale_worlds() == set()
    assert stale_worlds(**{"worlds.steep.aspect_effect": 0.3}) == {"simulate@steep"}
    assert stale_worlds(noise=0.3) == {"simulate@synthetic", "simulate@steep"}
    failed = run("socmap", "simulate", "--world", "flat", cwd=repo, check=False)
    assert failed.returncode == 2 and "simulate.worlds has no world 'flat'" in failed.stderr


def test_own_data_takes_the_simulation_out_of_the_pipeline(project):
    """Real data: point data.* at files added with `dvc add`, set simulate.worlds to {}, and repro runs
    from sample without the simulation."""
    raw = project / "data" / "raw"
    shutil.copytree(project / "data" / "synthetic" / "rasters", raw / "rasters")
    points = (project / "data" / "synthetic" / "points.csv").read_text().replace("GPS_LONG", "TH_LONG")
    (raw / "lucas.csv").write_text(points.replace("GPS_LAT", "TH_LAT"))
    run("dvc", "add", "data/raw/rasters", "data/raw/lucas.csv", cwd=project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["rasters"]["dir"] = "data/raw/rasters"
    params["data"]["points"]["path"] = "data/raw/lucas.csv"
    params["data"]["points"]["columns"].update(x="TH_LONG", y="TH_LAT")
    params["map"]["polygons"] = None  # the default's are the simulated world's districts
    params["simulate"]["worlds"] = {}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(project / "data" / "synthetic")
    assert "simulate" not in run("dvc", "stage", "list", cwd=project).stdout
    result = run("dvc", "repro", cwd=project)
    assert "simulate" not in result.stdout
    assert "Running stage 'sample'" in result.stdout and "Running stage 'map'" in result.stdout
    report = json.loads((project / "data/processed/report.json").read_text())
    assert report["rows_read"] == report["rows_kept"] + sum(report["drops"].values())
    assert "ceiling" not in json.loads((project / "metrics/evaluate/metrics.json").read_text())
    assert "has no rows" in json.loads((project / "plots/evaluate/details.json").read_text())["ceiling"]["skipped"]


# Earth Engine's exports of one world: (simulate.* of the world, the data.rasters patterns that read it)
EXPORTS = {
    "lonlat": ({"crs": "EPSG:4326"}, {}),
    "multiband": ({"crs": "EPSG:4326", "layout": "multiband"}, {"yearly": "{year}.tif"}),
    "tiled": ({"crs": "EPSG:4326", "layout": "tiled"}, {"yearly": "{band}/{year}-*.tif",
                                                        "static": "{band}/static-*.tif"}),
}
BOUNDARY = "data/region/tiny.geojson"


def boundary_geojson(inset: float) -> str:
    """The tiny world's box `inset` degrees inside its edges, as a GeoJSON polygon in lon/lat."""
    west, south, east, north = (v + d for v, d in zip(TINY_WORLD["simulate.bbox"], (inset, inset, -inset, -inset)))
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]})


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """A tiny project without the simulation: its inputs are one world as Earth Engine exports it in EPSG:4326
    (single-band files, one multi-band file a year, 2 × 2 tiles), each `dvc add`ed under data/raw/, and a
    boundary file under data/region/."""
    from socmap.simulate import simulate

    root = tmp_path_factory.mktemp("exports")
    repo = make_project(root / "socmap", root / "storage")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["simulate"]["worlds"], params["train"]["epochs"] = {}, 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, (world, _) in EXPORTS.items():
        folder = repo / "data" / "raw" / name
        simulate(tiny_params(folder, **{f"simulate.{k}": v for k, v in world.items()}).simulate, folder)
    (repo / BOUNDARY).write_text(boundary_geojson(0.01))
    run("dvc", "add", *[f"data/raw/{name}" for name in EXPORTS], BOUNDARY, cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "Earth Engine exports", cwd=repo)
    return repo


def test_earth_engine_exports_run_to_the_end_with_only_data_changed(exports):
    """data.* pointed at each export, then dvc repro: it runs to the map, on the EPSG:4326 grid, distances in
    the local working CRS; the three give the same patches (after the single-band files, the multi-band ones
    leave split and train up to date); with a boundary file, an edit of it makes sample, evaluate and map
    stale and nothing else."""
    patches, stages = {}, ("sample", "split", "train", "evaluate", "map")
    expected = {"lonlat": list(stages), "multiband": ["sample", "evaluate", "map"], "tiled": list(stages)}
    for name, (_, patterns) in EXPORTS.items():
        params = yaml.safe_load((exports / "params.yaml").read_text())
        params["data"]["rasters"].update(dir=f"data/raw/{name}/rasters",
                                         yearly=patterns.get("yearly", "{band}/{year}.tif"),
                                         static=patterns.get("static", "{band}/static.tif"))
        params["data"]["points"]["path"] = f"data/raw/{name}/points.csv"
        params["map"]["polygons"] = None  # the default's are the simulated world's districts
        params["data"]["region"]["boundary"] = BOUNDARY if name == "tiled" else None
        (exports / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = run("dvc", "repro", cwd=exports)
        ran = [stage for stage in stages if f"Running stage '{stage}'" in result.stdout]
        assert ran == expected[name], result.stdout
        assert json.loads(run("dvc", "status", "--json", cwd=exports).stdout) == {}, name
        report = json.loads((exports / "data/processed/report.json").read_text())
        assert report["grid"]["crs"] == "EPSG:4326" and report["working_crs"]["scale"][1] <= 1.0, name
        assert report["working_crs"]["from"].startswith("a transverse Mercator"), name
        assert report["rows_kept"] > 150 and {w["band"] for w in report["warped"]} == {"Elevation"}, name
        assert report["warped"][0].get("tiles") == (4 if name == "tiled" else None), name
        with rasterio.open(exports / "data/maps/soc_2020.tif") as soc:  # the region's window of the grid
            res, _, west, _, _, north = report["grid"]["transform"]
            offset = np.array([(soc.transform.c - west) / res, (north - soc.transform.f) / res])
            assert soc.crs.to_epsg() == 4326 and soc.res == tuple(report["grid"]["res"]), name
            np.testing.assert_allclose(offset, np.round(offset), atol=1e-6, err_msg=name)
            assert (soc.read(1) > 0).mean() > 0.5, name
        metrics = json.loads((exports / "metrics/evaluate/metrics.json").read_text())
        details = json.loads((exports / "plots/evaluate/details.json").read_text())  # holdout: one field
        assert details["kriging"]["space"] == "log" and len(details["kriging"]["variograms"]) == 1, name
        scored = pd.read_csv(exports / "plots/evaluate/predictions.csv")  # the headline is the table's r2
        errors = scored["observed"] - scored["ensemble"]
        r2 = 1 - (errors**2).sum() / ((scored["observed"] - scored["observed"].mean()) ** 2).sum()
        assert metrics["n"] == len(scored) > 20 and metrics["r2"] == pytest.approx(r2), name
        assert json.loads((exports / "metrics/split.json").read_text())["min_distance_km"] > 1.2, name
        rows = pd.read_parquet(exports / "data/processed/samples.parquet")["row_id"].to_numpy()
        patches[name] = (report, rows, np.load(exports / "data/processed/patches.npy"))
    (lonlat, rows, same), (_, _, multiband), (tiled, tiled_rows, inside) = patches.values()
    np.testing.assert_array_equal(multiband, same)
    assert tiled["drops"]["outside_region"] > lonlat["drops"]["outside_region"]  # the boundary is the region
    np.testing.assert_array_equal(inside, same[np.isin(rows, tiled_rows)])

    (exports / BOUNDARY).write_text(boundary_geojson(0.02))  # the user edits the boundary
    status = json.loads(run("dvc", "status", "--json", cwd=exports).stdout)
    stale = {stage for stage, changes in status.items() for change in changes
             if isinstance(change, dict) and "data/region" in (change.get("changed deps") or {})}
    assert stale == {"sample", "evaluate", "map"}, status
