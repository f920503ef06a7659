"""Masked-autoencoder (ViT-MAE) pretraining of small vision encoders on local image folders."""
