# fMRI tokens aligned with text (issue 22): vq-align on the region dataset (and its ablation
# without the domain classifier), then a language model over text tokens + fMRI codes that
# answers with text.target. Off unless text.enabled; needs the text extra (pip install ".[text]").

TEXT = config["text"]
TEXT_DIR = f"{OUT}/text"
if TEXT["enabled"]:
    if not TEXT["target"]:
        raise WorkflowError("text.enabled needs text.target: the numeric participants.tsv column to answer with")
    if bool(TEXT["template"]) == bool(TEXT["column"]):
        raise WorkflowError("text.enabled needs exactly one of text.template and text.column "
                            f"(template {TEXT['template']!r}, column {TEXT['column']!r})")


def text_train_options(task, section, **extra):
    """Command-line options of fmriflow.train for a text task."""
    keys = ("model", "batch_size", "max_steps", "lr")
    shared = ("warmup_steps", "checkpoint_every", "precision", "seed", "num_workers")
    texts = {"text_template": TEXT["template"] or "", "text_column": TEXT["column"] or "",
             "text_model": TEXT["text_model"] or ""}
    return cli_options({"task": task, **{k: section[k] for k in keys}, **{k: TEXT[k] for k in shared}, **texts, **extra})


def vq_align_dir(variant):
    return f"{TEXT_DIR}/vq-align_{variant}"


LM_DIR = f"{TEXT_DIR}/lm-finetune_target-{TEXT['target']}"


def text_outputs():
    if not TEXT["enabled"]:
        return []
    return [f"{LM_DIR}/lm_metrics.tsv", *([f"{vq_align_dir('ablation')}/region_r2.tsv"] if TEXT["ablation"] else [])]


def text_report_files():
    """Run name -> the file the report's Text alignment section reads (none when text is off)."""
    if not TEXT["enabled"]:
        return {}
    runs = ["aligned", *(["ablation"] if TEXT["ablation"] else [])]
    return {**{run: f"{vq_align_dir(run)}/metrics.csv" for run in runs}, "lm": f"{LM_DIR}/lm_metrics.tsv"}


rule vq_align:
    """Autoencoder + vector quantiser + domain classifier (aligned), or without its gradient (ablation)."""
    input:
        card=rules.dataset.output.card,
        participants=PARTICIPANTS,
    output:
        model=f"{vq_align_dir('{variant}')}/model.pt",
        metrics=f"{vq_align_dir('{variant}')}/metrics.csv",
        region_r2=f"{vq_align_dir('{variant}')}/region_r2.tsv",
    wildcard_constraints:
        variant="aligned|ablation",
    params:
        launcher=launch.train_launcher(TEXT, JOB_PYTHON),
        dataset=DATASET_DIR,
        out=lambda wc: vq_align_dir(wc.variant),
        options=lambda wc: text_train_options("vq-align", TEXT["vq_align"], restart_every=TEXT["vq_align"]["restart_every"],
                                              # the ablation's weight is 0 whatever the gate: a gate change reruns only aligned
                                              reversal_gate=0.0 if wc.variant == "ablation" else TEXT["vq_align"]["reversal_gate"],
                                              align_weight=0.0 if wc.variant == "ablation" else TEXT["vq_align"]["align_weight"]),
    threads: launch.train_threads(TEXT)
    resources:
        **launch.train_resources(TEXT),
    log:
        f"{LOGS}/vq_align/{{variant}}.log",
    shell:
        "{params.launcher} -m fmriflow.train --dataset {params.dataset} --participants {input.participants}"
        " --out {params.out} {params.options} > {log} 2>&1"


rule lm_finetune:
    """The language model over text tokens + the aligned fMRI codes; answers scored against the training mean."""
    input:
        card=rules.dataset.output.card,
        participants=PARTICIPANTS,
        vq=f"{vq_align_dir('aligned')}/model.pt",
    output:
        model=f"{LM_DIR}/model.pt",
        metrics=f"{LM_DIR}/metrics.csv",
        predictions=f"{LM_DIR}/predictions.tsv",
        lm_metrics=f"{LM_DIR}/lm_metrics.tsv",
    params:
        launcher=launch.train_launcher(TEXT, JOB_PYTHON),
        dataset=DATASET_DIR,
        out=LM_DIR,
        # a function: Snakemake would fill wildcards into a plain string (the prompt's "{sex}")
        options=lambda wc: text_train_options("lm-finetune", TEXT["lm_finetune"], target=TEXT["target"] or "",
                                              text_prompt=TEXT["prompt"] or ""),
    threads: launch.train_threads(TEXT)
    resources:
        **launch.train_resources(TEXT),
    log:
        f"{LOGS}/lm_finetune/{TEXT['target']}.log",
    shell:
        "{params.launcher} -m fmriflow.train --dataset {params.dataset} --participants {input.participants}"
        " --init-from {input.vq} --out {params.out} {params.options} > {log} 2>&1"
