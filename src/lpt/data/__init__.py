"""Data: image sources, long-tail profiles, transforms and the samplers of dual sampling."""

from lpt.data.build import SOURCES, DataSplits, build_datasets
from lpt.data.datasets import ArrayImageDataset, FileImageDataset, ImageDataset
from lpt.data.longtail import class_counts, longtail_counts, longtail_indices
from lpt.data.samplers import ClassBalancedSampler, InstanceSampler, TrainStream, build_train_stream
from lpt.data.sources import read_list_file
from lpt.data.transforms import build_transform

__all__ = [
    "SOURCES", "ArrayImageDataset", "ClassBalancedSampler", "DataSplits", "FileImageDataset", "ImageDataset",
    "InstanceSampler", "TrainStream", "build_datasets", "build_train_stream", "build_transform", "class_counts",
    "longtail_counts", "longtail_indices", "read_list_file",
]
