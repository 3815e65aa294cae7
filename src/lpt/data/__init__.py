"""Data: image sources, long-tail profiles, transforms and the samplers of dual sampling."""

from lpt.data.build import (SOURCES, DataSplits, Source, TrainImages, build_datasets, build_test_dataset,
                            build_train_labels, build_val_dataset, train_images, with_eval_transform, with_transform)
from lpt.data.datasets import ArrayImageDataset, FileImageDataset, ImageDataset
from lpt.data.longtail import class_counts, longtail_counts, longtail_indices
from lpt.data.samplers import ClassBalancedSampler, InstanceSampler, TrainStream, build_train_stream
from lpt.data.sources import read_class_index, read_inat_json, read_list_file
from lpt.data.transforms import build_init_transform, build_transform

__all__ = [
    "SOURCES", "ArrayImageDataset", "ClassBalancedSampler", "DataSplits", "FileImageDataset", "ImageDataset",
    "InstanceSampler", "Source", "TrainImages", "TrainStream", "build_datasets", "build_test_dataset",
    "build_init_transform", "build_train_labels", "build_train_stream", "build_transform", "build_val_dataset",
    "class_counts",
    "longtail_counts", "longtail_indices", "read_class_index", "read_inat_json", "read_list_file", "train_images",
    "with_eval_transform", "with_transform",
]
