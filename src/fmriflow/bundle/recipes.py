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
