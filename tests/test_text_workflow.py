"""The text rules in the plan (workflow/rules/text.smk): off by default; text.enabled plans vq-align,
its ablation (align_weight 0) and lm-finetune with the config's settings; a bad text section stops
the plan with the keys named. Dry runs only: the tasks themselves are tested in test_text_tasks.py."""

from __future__ import annotations

import json

import pytest
from test_workflow import demo_config, make_demo, planned_jobs, run_snakemake

TEXT = {"enabled": True, "template": "sex: {sex}; age: {age}", "target": "age", "prompt": "sex: {sex}; age:"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory, atlas_dir):
    return make_demo(tmp_path_factory.mktemp("textdemo"), atlas_dir, n_subjects=2, n_trs=20, bold_res=4, seed=23)


def test_text_rules_are_opt_in_and_planned_with_their_settings(demo, tmp_path):
    results = tmp_path / "results"
    off = planned_jobs(run_snakemake(tmp_path, demo_config(demo, results), "--dry-run"))
    assert not {"vq_align", "lm_finetune"} & set(off)
    proc = run_snakemake(tmp_path, demo_config(demo, results, text=TEXT), "--dry-run", "--printshellcmds")
    on = planned_jobs(proc)
    assert on["vq_align"] == 2 and on["lm_finetune"] == 1
    commands = [line for line in proc.stdout.splitlines() if "fmriflow.train" in line and "--task" in line]
    ablation = next(c for c in commands if "vq-align_ablation" in c)
    aligned = next(c for c in commands if "vq-align_aligned" in c and "--task vq-align" in c)
    lm = next(c for c in commands if "--task lm-finetune" in c)
    assert "--align-weight 0.0" in ablation and "--align-weight 0.5" in aligned
    assert "--text-template 'sex: {sex}; age: {age}'" in aligned
    assert "--target age" in lm and "--text-prompt 'sex: {sex}; age:'" in lm and "vq-align_aligned/model.pt" in lm
    # the report reads the text runs (Snakemake shows the last of its long input list: the language model's scores)
    report = proc.stdout[proc.stdout.index("rule report:"):]
    assert "lm-finetune_target-age/lm_metrics.tsv" in report[:report.index("output:")]


def test_text_section_needs_a_target_and_one_text_source(demo, tmp_path):
    results = tmp_path / "results"
    proc = run_snakemake(tmp_path, demo_config(demo, results, text={**TEXT, "column": "site"}), "--dry-run")
    assert proc.returncode != 0
    assert "exactly one of text.template and text.column" in proc.stdout + proc.stderr


def test_tracked_params_of_a_template_survive_snakemake_wildcards():
    from snakemake.io import apply_wildcards

    from fmriflow.smk import tracked_params

    params = tracked_params({"text": {"template": "sex: {sex}; age: { age}", "empty": {}}, "list": ["{a}"]})
    shown = {k: apply_wildcards(v, {}) for k, v in params.items() if k.startswith("_shape")}
    decoded = dict(text.split("=", 1) for text in shown.values())
    assert {k: json.loads(v) for k, v in decoded.items()} == {
        "text.template": "sex: {sex}; age: { age}", "text.empty": {}, "list": ["{a}"]}
