from pathlib import Path

from fmriflow.bundle import CARD
from fmriflow.provenance import write_sidecar
from fmriflow.report import build_report
from fmriflow.smk import logged

with logged(snakemake.log[0]):
    i, o, p = snakemake.input, snakemake.output, snakemake.params
    run_files = {run: {"confounds": c, "bold": b, "mask": m, "denoised": d}
                 for run, c, b, m, d in zip(p.runs, i.confounds, i.bold, i.mask, i.denoised)}
    summary = build_report(
        o.html,
        participants=i.participants,
        manifest=i.manifest,
        validation=i.validation,
        qc=list(i.qc),
        coverage=list(i.coverage),
        group_fc=i.group_fc,
        group_diff=i.group_diff,
        ground_truth_edges=i.ground_truth[0] if i.ground_truth else None,
        config=dict(snakemake.params.config),
        run_qc=i.run_qc,
        run_files=run_files,
        atlas_image=i.get("atlas_image"),  # none without BOLD (input.mode timeseries)
        atlas_labels=i.atlas_labels,
        pretrain_metrics=i.pretrain[0] if i.pretrain else None,
        voxel_metrics=dict(zip(p.voxel_names, i.voxel)),
        finetune_table=i.finetune_table[0] if i.finetune_table else None,
        predictions=list(i.predictions),
        encoder_card=next((f for f in i.encoder if Path(f).name == CARD), None),
        figures_dir=o.figures,
        text=dict(zip(p.text_names, i.text)),
        recipes=dict(zip(p.recipe_names, i.recipes)),  # released models' recipes (config recipes)
    )
    write_sidecar(o.html, "report", summary["inputs"], config=snakemake.params.config["report"])
