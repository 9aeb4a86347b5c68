# Structural connectomes from raw diffusion MRI (opt-in: brainsymphony.sc.source qsiprep):
#   qsirecon_atlas   the model's atlas as the BIDS atlas dataset QSIRecon reads (--datasets, --atlases)
#   qsiprep          QSIPrep 26.0 in its container, one job per subject -> <output_dir>/qsiprep
#   qsirecon         QSIRecon 26.0 (an MRtrix3 spec) on QSIPrep's outputs, one job per subject
#                    -> <output_dir>/qsirecon; the subject's connectivity .mat is then copied to
#                    <output_dir>/sc/qsirecon/sub-<s>_atlas-<atlas>_connectivity.mat, which
#                    sc_connectome (brainsymphony.smk) reads.
# The container commands are built in fmriflow.sc.qsiprep (what `snakemake -n -p` prints is what runs).

if qsi_active():

    rule qsirecon_atlas:
        """The model's atlas in LPS+ with the sform zeroed, under tpl-MNI152NLin2009cAsym, with its table."""
        input:
            image=QSI["atlas_image"] or atlas_img(ATLAS),
            labels=atlas_labels(ATLAS),
        output:
            image=f"{QSI_ATLASES}/tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_atlas-{ATLAS}_dseg.nii.gz",
            labels=f"{QSI_ATLASES}/tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_atlas-{ATLAS}_dseg.tsv",
            description=f"{QSI_ATLASES}/dataset_description.json",
        params:
            atlas=ATLAS,
            root=QSI_ATLASES,
            # qsiprep.atlas_image is already in QSIRecon's template; fmriflow's own lies on MNI152NLin6Asym
            source_space="MNI152NLin2009cAsym" if QSI["atlas_image"] else "MNI152NLin6Asym",
        log:
            f"{LOGS}/qsirecon_atlas/atlas-{ATLAS}.log",
        script:
            "../scripts/qsirecon_atlas.py"

    rule qsiprep:
        """QSIPrep on one subject's raw DWI (and T1w); its preprocessed DWI listed with checksums."""
        input:
            raw=qsi_raw_files,
        output:
            record=qsiprep_record("{subject}"),
        wildcard_constraints:
            subject="[A-Za-z0-9]+",  # a BIDS label
        params:
            command=qsi_shell_command("qsiprep"),
            dirs=lambda wildcards: f"{QSI_WORK}/qsiprep/sub-{wildcards.subject} {QSIPREP_DIR}",
            python=sys.executable,  # the job runs on the host (the container is QSIPrep's own)
            root=QSIPREP_DIR,
        threads: QSI["threads"]
        resources:
            mem_mb=QSI["mem_mb"],
            runtime=QSI["runtime_minutes"],
        log:
            f"{LOGS}/qsiprep/sub-{{subject}}.log",
        # none of Snakemake's: the command starts QSIPrep's own image
        container:
            None
        shell:
            "mkdir -p {params.dirs} && {params.command} > {log} 2>&1"
            " && {params.python} -m fmriflow.sc.qsirecon record-qsiprep --qsiprep-dir {params.root:q}"
            " --subject {wildcards.subject} --out {output.record:q} --inputs {input.raw:q} >> {log} 2>&1"

    rule qsirecon:
        """QSIRecon's MRtrix3 connectome of one subject in the model's atlas, copied to a fixed name."""
        input:
            qsiprep=qsiprep_record("{subject}"),
            atlas=rules.qsirecon_atlas.output.image,
            labels=rules.qsirecon_atlas.output.labels,
            **({"spec": QSI["recon_spec"]} if Path(QSI["recon_spec"]).suffix in (".yaml", ".yml", ".json") else {}),
        output:
            connectome=qsirecon_connectome("{subject}"),
        wildcard_constraints:
            subject="[A-Za-z0-9]+",  # a BIDS label
        params:
            command=qsi_shell_command("qsirecon"),
            dirs=lambda wildcards: f"{QSI_WORK}/qsirecon/sub-{wildcards.subject} {QSIRECON_DIR}",
            python=sys.executable,
            root=QSIRECON_DIR,
            atlas=ATLAS,
        threads: QSI["threads"]
        resources:
            mem_mb=QSI["mem_mb"],
            runtime=QSI["runtime_minutes"],
        log:
            f"{LOGS}/qsirecon/sub-{{subject}}.log",
        container:
            None
        shell:
            "mkdir -p {params.dirs} && {params.command} > {log} 2>&1"
            " && {params.python} -m fmriflow.sc.qsirecon collect --qsirecon-dir {params.root:q} --atlas {params.atlas}"
            " --subject {wildcards.subject} --out {output.connectome:q} --inputs {input.qsiprep:q} >> {log} 2>&1"
