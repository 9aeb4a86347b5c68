"""The text side of fMRI-text alignment (issue 22): per-subject texts from participants.tsv
(``subjects``), their tokenizer (``tokenizer``: trained with the ``tokenizers`` library, or a local
pretrained one), prompts of fMRI code tokens + text and the parsing of generated answers
(``prompts``), and the causal language model over text tokens + fMRI codes (``lm``).

``tokenizer`` and ``lm`` need the optional ``text`` extra (``pip install "fmriflow[text]"``:
``tokenizers`` and ``transformers``); ``subjects`` and ``prompts`` need neither.
"""
