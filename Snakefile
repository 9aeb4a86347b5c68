# fmriflow: raw BIDS fMRI -> fMRIPrep derivatives -> A424 grid -> denoised BOLD
#           -> A424 region time series -> connectivity -> report.
# input.mode timeseries: ready-made region time series of any atlas -> connectivity -> report.
#
# Outputs (<output_dir> = config output_dir, "results" by default):
#   <output_dir>/bids/                    manifest.tsv (every raw file, sha256, TR, shape), validation.json
#   <output_dir>/fmriprep/, work/fmriprep/ preproc.mode fmriprep: fMRIPrep's outputs, per-subject work dirs (kept)
#   <output_dir>/preproc-lite/            preproc.mode lite: fMRIPrep-shaped outputs of the minimal preprocessing
#   <output_dir>/timeseries/              input.mode timeseries: manifest.tsv (every input file, sha256), validation.json
#   <output_dir>/fmriflow/                BIDS-Derivatives root (dataset_description.json)
#       atlases/atlas-A424/               the atlas used, with its look-up table
#       sub-*/[ses-*/]func/               per run: QC row, BOLD + mask on the atlas grid, denoised BOLD,
#                                         A424 time series + coverage, Pearson FC; each with a JSON sidecar
#       group/                            group-mean FC and group difference; desc-runs_qc.tsv (run QC, exclusions)
#   <output_dir>/dataset/atlas-A424/       model-ready windows (memory-mapped), splits, scaling, dataset card
#   <output_dir>/pretrain/<model>/        pretrained masked autoencoder (model.pt), metrics.csv
#   <output_dir>/fmriflow/models/atlas-A424_model-<model>/  the encoder as a bundle for other projects:
#                                         model.safetensors, config.json, model_card.json (finetune.encoder)
#   <output_dir>/finetune/<target>/       features/, setup-*/ (predictions, metrics, folds, attributions),
#                                         variants.tsv (every variant and baseline of every set-up)
#   <output_dir>/dataset/voxel-<grid>/    (voxel.enabled) z-scored 4-D frames on a model's grid, memory-mapped
#   <output_dir>/voxel/                   (voxel.enabled) NeuroSTORM pretraining, BrainMT / NeuroSTORM fine-tuning
#   <output_dir>/sc/atlas-A424/transform-<t>/  (brainsymphony.enabled) connectomes as the model takes them
#   <output_dir>/qsiprep/, qsirecon/, sc/qsirecon/, work/qsi*/  (brainsymphony.sc.source qsiprep) QSIPrep's and
#                                         QSIRecon's outputs, each subject's collected connectome, work dirs (kept)
#   <output_dir>/brainsymphony/<model>_modalities-<m>/  (brainsymphony.enabled) pretrained BrainSymphony, metrics.csv
#   <output_dir>/text/                    (text.enabled) vq-align_aligned/, vq-align_ablation/ (fMRI codes aligned with
#                                         text, and without the domain classifier), lm-finetune_target-<target>/
#   <output_dir>/report/fmriflow_report.html
#   <output_dir>/logs/<rule>/...          one log per job

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/bids.smk"
include: "workflow/rules/atlas.smk"
include: "workflow/rules/preproc.smk"
include: "workflow/rules/resample.smk"
include: "workflow/rules/denoise.smk"
include: "workflow/rules/parcellate.smk"
include: "workflow/rules/timeseries.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/connectivity.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/bundle.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/voxel.smk"
include: "workflow/rules/qsiprep.smk"
include: "workflow/rules/brainsymphony.smk"
include: "workflow/rules/recipes.smk"
include: "workflow/rules/text.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_outputs(),
        voxel_outputs(),
        text_outputs(),
    default_target: True
