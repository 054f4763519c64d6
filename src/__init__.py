"""Fine-tune BERT-family sequence classifiers on review-rating data with PyTorch Lightning."""
