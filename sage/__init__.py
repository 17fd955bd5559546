"""SAGE: saliency-guided contrastive embeddings and its baselines, as a plain PyTorch library.

Entry points: `sage.config.TrainConfig`, `sage.training.fit`, `sage.inference.Predictor`,
`sage.heatmaps`, `sage.metrics.saliency_alignment`, `sage.synthetic.make_dataset`, and the
`python -m sage` command line (make-dataset, train, evaluate, bench).
"""

__version__ = "0.1.0"
