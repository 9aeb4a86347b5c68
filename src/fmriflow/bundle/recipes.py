"""The input recipes of released checkpoints, as their authors prepared the pretraining data; an
imported bundle's model card records them (``imports``).

Each recipe is what the authors' published code does, named by file, including its quirks: a
recipe step of the workflow reproduces them, and a user can see where they depart from ours.
"""

from __future__ import annotations

BRAINLM_SOURCE = "vandijklab/BrainLM (GitHub, commit b591d88) and its Hugging Face release vandijklab/brainlm"
UKB_TR = 0.735  # s, UK Biobank resting-state fMRI

_BRAINLM_PREPROCESSING = {
    "pipeline": "UK Biobank imaging pipeline (FSL: motion correction, FIX ICA denoising, high-pass, MNI152 2 mm)",
    "parcellation": "A424+2mm.nii.gz: mean of each parcel's voxels per TR (NaN -> 0), toolkit/BrainLM_Toolkit.py "
                    "convert_fMRIvols_to_A424",
    "resampling": "none: each recording at its own TR (UK Biobank 0.735 s)",
}
_BRAINLM_DATA = {
    "source": "UK Biobank resting-state and task fMRI (the authors' split; not distributed)",
    "reference": "Ortega Caro et al., BrainLM: a foundation model for brain activity recordings, ICLR 2024",
}


def _tr() -> dict:
    return {"target_tr": UKB_TR, "stored": [UKB_TR],
            "resampling": "none by the authors (UK Biobank's TR); a recipe step resamples other TRs to it"}


def brainlm_v1_recipe(window: int, patch_size: int) -> dict:
    """Card sections ``input``, ``scaling``, ``preprocessing`` and ``pretraining_data`` of BrainLM v1."""
    return {
        "input": {"window": window, "patch_size": patch_size, "stride": None, "tr": _tr(),
                  "layout": "regions x time, A424 atlas order (label 1..424); a window of consecutive TRs at a "
                            "random start (train.py preprocess_fmri); xyz: A424_Coordinates.dat, raw MNI mm",
                  "dtype": "float32"},
        "scaling": {"method": "brainlm-v1 'Voxelwise_RobustScaler_Normalized_Recording' (train.py default)",
                    "formula": "per recording: x - mean over time, per region; then x - median / IQR per region, "
                               "as toolkit/BrainLM_Toolkit.py computes it (the median divided by the IQR is "
                               "subtracted; nothing is divided)",
                    "fit_on": "the authors' training recordings: median and IQR over the first 200 TRs of each "
                              "mean-centred recording, zeros left out of the IQR",
                    "n_timepoints": None, "median": None, "iqr": None,
                    "statistics": "not released: refit them on the project's training subjects "
                                  "(finetune.scaling: refit)",
                    "regions_with_zero_iqr": None},
        "preprocessing": dict(_BRAINLM_PREPROCESSING),
        "pretraining_data": dict(_BRAINLM_DATA),
    }


def brainlm_vitmae_recipe(image_size: list[int], patch_size: int) -> dict:
    """Card sections of BrainLM's ViT-MAE models (as brainlm_tutorial.ipynb prepares their input)."""
    return {
        "input": {"window": 200, "patch_size": patch_size, "stride": None, "tr": _tr(),
                  "layout": f"an image: regions sorted by MNI y (ascending, ties in atlas order) as rows, 200 TRs as "
                            f"columns, the same values in 3 channels, padded with -1 to {image_size[0]}x"
                            f"{image_size[1]}; fmriflow builds it inside the model from A424-order input",
                  "dtype": "float32"},
        "scaling": {"method": "brainlm-vitmae 'All_Patient_All_Voxel_Normalized_Recording' / 5.6430855 "
                              "(brainlm_tutorial.ipynb)",
                    "formula": "(x - min) / (max - min) with the min and max over all training recordings and "
                               "regions, then divided by the constant 5.6430855",
                    "fit_on": "the authors' training recordings", "n_timepoints": None,
                    "median": None, "iqr": None, "constant": 5.6430855,
                    "statistics": "not released (the global min and max): refit them on the project's training "
                                  "subjects",
                    "regions_with_zero_iqr": None},
        "preprocessing": dict(_BRAINLM_PREPROCESSING),
        "pretraining_data": dict(_BRAINLM_DATA),
    }


BRAIN_JEPA_SOURCE = "Eric-LRL/Brain-JEPA (GitHub, commit b1dfa93), checkpoint jepa-ep300.pth.tar"


def brain_jepa_recipe(n_frames: int, patch_size: int) -> dict:
    """Card sections of Brain-JEPA (src/datasets/ukbiobank_scale.py, configs/ukb_vitb_ep300.yaml)."""
    return {
        "input": {"window": n_frames, "patch_size": patch_size, "stride": None,
                  "tr": {"target_tr": 3 * UKB_TR, "stored": [UKB_TR],
                         "resampling": "every 3rd frame of the UK Biobank series (0.735 s -> 2.205 s): a clip of "
                                       f"{3 * n_frames} frames at a random start, {n_frames} frames at evenly "
                                       "spaced indices (linspace, truncated)"},
                  "layout": "regions x time: Tian S3 subcortex (50) first, then Schaefer-400 (17 networks), each in "
                            "its atlas order",
                  "dtype": "float32"},
        "scaling": {"method": "robust", "formula": "(x - median) / iqr per region, statistics over the training "
                                                   "subjects, before the frame sampling",
                    "fit_on": "the authors' UK Biobank training subjects", "n_timepoints": None,
                    "median": None, "iqr": None,
                    "statistics": "not released (normalization_params_train.npz): refit them on the project's "
                                  "training subjects (finetune.scaling: refit)",
                    "regions_with_zero_iqr": None},
        "preprocessing": {"pipeline": "UK Biobank imaging pipeline (FSL, FIX ICA denoising, MNI152)",
                          "parcellation": "Schaefer-400 17 networks (fMRI.Schaefer17n400p) and Tian S3 "
                                          "(fMRI.Tian_Subcortex_S3_3T) region means"},
        "pretraining_data": {"source": "UK Biobank resting-state fMRI (the authors' split; not distributed)",
                             "reference": "Dong et al., Brain-JEPA, NeurIPS 2024"},
    }


NEUROSTORM_SOURCE = ("CUHK-AIM-Group/NeuroSTORM (GitHub, commit a8dc38f), a Lightning checkpoint of its "
                     "LightningModel (pretraining MAE or a fine-tuned task model)")
NEUROSTORM_TR = 0.8  # s, datasets/preprocessing_volume.py temporal_resampling


def neurostorm_recipe(hparams: dict, img_size: list[int], patch_size: int) -> dict:
    """Card sections of NeuroSTORM (datasets/preprocessing_volume.py, datasets/fmri_datasets.py)."""
    frames = int(hparams.get("sequence_length", img_size[3]))
    within = int(hparams.get("stride_within_seq", 1))
    between = float(hparams.get("stride_between_seq", 1))
    return {
        "input": {"window": frames, "patch_size": patch_size, "stride": max(round(between * frames * within), 1),
                  "frame_step": within,
                  "tr": {"target_tr": NEUROSTORM_TR, "stored": [NEUROSTORM_TR],
                         "resampling": "each run resampled to 0.8 s by linear interpolation along time "
                                       "(torch F.interpolate, align_corners=False, round(T * TR / 0.8) frames), "
                                       "before the crop"},
                  "layout": f"voxels: MNI152 at 2 mm (trilinear from the header's voxel size), each axis centred-"
                            f"cropped to 96 where longer (start (n - 96) // 2), then padded to 96 with the volume's "
                            f"first voxel value, ceil(pad / 2) before and floor(pad / 2) after (91 -> 3 + 2; "
                            f"fmriflow's voxel dataset pads 2 + 3); {frames} consecutive frames from 0.8 s "
                            f"series; the authors' tensor (B, 1, X, Y, Z, T) is fmriflow's (B, T, X, Y, Z); "
                            f"patches {patch_size}^3 x 1 frame, model grid {img_size[:3]} x {img_size[3]} frames",
                  "dtype": "float32 (stored int8 with a per-run scale since 2026-05, float16 frames before)"},
        "scaling": {"method": "neurostorm 'z-norm' (preprocessing_volume.py)",
                    "formula": "per run: background = voxels that are 0 (HCP, UKB) or outside the dataset's brain "
                               "mask; background and negative values set to 0; (x - mean) / std with the mean and "
                               "std over every brain voxel of every frame of the run; background set to the "
                               "minimum of the normalised brain voxels",
                    "fit_on": "each run itself: nothing to refit", "n_timepoints": None, "median": None,
                    "iqr": None, "statistics": "none: per-run global z-scoring over the brain voxels",
                    "regions_with_zero_iqr": None,
                    "voxel_norm_channels": bool(hparams.get("with_voxel_norm", False))},
        "preprocessing": {"pipeline": "minimally preprocessed fMRI in MNI152 space (HCP pipelines for HCP-YA / "
                                      "HCP-A / HCP-D, UK Biobank's FSL pipeline, fMRIPrep for others); optional "
                                      "FSL BET brain extraction (datasets/brain_extraction.sh)",
                          "spatial": "2 mm isotropic, 96^3 after the crop / pad", "temporal": "TR 0.8 s"},
        "pretraining_data": {"source": f"{hparams.get('dataset_name', 'HCP-YA, HCP-A, HCP-D, ABCD, UK Biobank')} "
                                       "(the authors' split; not distributed)",
                             "reference": "Wang et al., Towards a general-purpose foundation model for fMRI "
                                          "analysis (NeuroSTORM), arXiv 2506.11167"},
    }
