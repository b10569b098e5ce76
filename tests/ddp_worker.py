"""Run by tests/test_scale_training.py under ``accelerate launch``: trains a tiny classifier on the shapes data with
every process and keeps the epoch checkpoint. Usage: ddp_worker.py WORKDIR [STOP_AFTER_EPOCH] (every process
exits after that epoch's checkpoint, as an interrupted run)."""

import sys

import torch

import shapes
from synthaug.data import LabeledImages, LabelSchema
from synthaug.train.config import TrainConfig
from synthaug.processes import Processes
from synthaug.train.loop import train_classifier

SCHEMA = LabelSchema.from_dict(shapes.GROUPS)
CFG = TrainConfig(epochs=2, batch_size=15, lr=3e-3, augment="soft", batch_mix="cutmix", mixing="combined",
                  loss="balanced-softmax", precision="fp32", model={"dropout": 0.3})


def images(n, seed, long_tailed=True):
    pixels, labels = shapes.make_split(n, seed, long_tailed=long_tailed)
    return LabeledImages(SCHEMA, labels, [f"{seed}:{i}" for i in range(n)], pixels=pixels)


if __name__ == "__main__":
    processes = Processes.launched(torch.device("cpu"))
    stop_after = int(sys.argv[2]) if len(sys.argv) > 2 else None

    def interrupt(epoch, row):
        if epoch + 1 == stop_after:
            sys.exit(0)

    train_classifier(images(32, 0), images(16, 5, long_tailed=False), CFG, sys.argv[1], val=images(12, 9),
                     progress=False, seed=3, keep_checkpoint=True, processes=processes, on_epoch_end=interrupt)
