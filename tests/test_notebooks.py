"""The research notebooks run (nbclient) on tiny artifacts made here: inspect_checkpoint.ipynb restores a
2-way FSDP classifier checkpoint onto another mesh and onto one device; complexity_ablation.ipynb says
what to run when a sweep has no results yet (tests/tools/test_sweep.py runs it on a real sweep);
data_engine_gallery.ipynb shows every family, version, complexity level and clarity degradation;
mesh_and_sharding.ipynb places a toy block with every rule preset on 8 fake devices. Every notebook in
notebooks/ has its test here (the one place that executes them)."""

import os

import pytest

from mathvlm import config as mc
from mathvlm import main as mathvlm_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_notebook(name: str, env: dict) -> str:
    """Execute ``notebooks/<name>`` with ``env`` added to the kernel's environment; returns all text
    output. Fails on any cell error."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel process inherits this process's environment
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def test_inspect_checkpoint_restores_a_sharded_run_onto_other_meshes(tmp_path):
    config = mc.load(os.path.join(ROOT, "configs/math_llava/complexity_classifier.py") + ":size=tiny,steps=2")
    mc.override(config, "mesh.fsdp", "2")
    mc.override(config, "data.batch_size", "8")
    run = tmp_path / "complexity"
    mathvlm_main.run(config, str(run))
    text = run_notebook("inspect_checkpoint.ipynb", {"MATHVLM_RUN": str(run),
                                                     "MATHVLM_MESH": "data=1,fsdp=4,tensor=2"})
    assert f"run {run}" in text and "newest checkpoint: step 2" in text
    assert "onto mesh {'data': 1, 'fsdp': 4, 'tensor': 2} with rules 'fsdp_tp'" in text
    assert "head/kernel" in text
    assert "max |difference| to the 8-device restore: 0.0" in text
    assert "held-out accuracy on these 8" in text


def test_complexity_ablation_without_results_says_what_to_run(tmp_path):
    text = run_notebook("complexity_ablation.ipynb", {"MATHVLM_SWEEP": str(tmp_path)})
    assert "python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py --run" in text


def test_data_engine_gallery_shows_every_family_level_and_clarity():
    text = run_notebook("data_engine_gallery.ipynb", {"MATHVLM_SEED": "0"})
    assert all(f"== {family}" in text for family in ("plane_geometry", "analytic_geometry", "function"))
    assert "levels 0-3 in 400 problems" in text and "shown 5 clarity examples" in text


def test_mesh_and_sharding_places_a_block_with_every_preset():
    text = run_notebook("mesh_and_sharding.ipynb", {})
    for preset in ("dp", "fsdp", "fsdp_tp"):
        assert f"{preset} up:" in text
    assert "dp up: P(None, None) | replicated: 100.0%" in text
    assert "fsdp up: P('fsdp', None) | replicated: 0.3%" in text
    assert "fsdp_tp up: P('fsdp', 'tensor') | replicated: 0.3%" in text
    assert "over 8 devices" in text


def test_every_notebook_has_a_test_here():
    with open(__file__) as f:
        source = f.read()
    notebooks = sorted(n for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb"))
    assert notebooks
    missing = [n for n in notebooks if f'run_notebook("{n}"' not in source]
    assert not missing, f"notebooks without a test in tests/test_notebooks.py: {missing}"
