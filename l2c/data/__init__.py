"""Datasets: MNIST (bundled default), image folders (ImageNet layout), test fixtures."""
