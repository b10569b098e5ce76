"""Class statistics: counts, imbalance ratio, many/medium/few-shot groups (ImageNet-LT convention)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug.data.schema import LabelSchema
from synthaug.errors import SettingError


@dataclass(frozen=True)
class ShotThresholds:
    """many-shot: more than ``many`` images; few-shot: fewer than ``few``; medium in between (inclusive)."""

    many: int = 100
    few: int = 20

    def __post_init__(self):
        if self.few > self.many:
            raise SettingError(f"Shot thresholds need few <= many, but got few={self.few}, many={self.many}.")

    def group(self, count: int) -> str:
        if count > self.many:
            return "many"
        if count < self.few:
            return "few"
        return "medium"


@dataclass
class ClassStats:
    schema: LabelSchema
    counts: list[np.ndarray]  # one array per label group
    thresholds: ShotThresholds

    @classmethod
    def from_labels(cls, schema: LabelSchema, labels: np.ndarray, thresholds: ShotThresholds = ShotThresholds()):
        labels = np.asarray(labels).reshape(-1, len(schema.groups))
        counts = [np.bincount(labels[:, g], minlength=n) for g, n in enumerate(schema.group_sizes)]
        return cls(schema, counts, thresholds)

    def imbalance_ratio(self, group: int = 0) -> float:
        """max / min class count in a group (inf when a class has no images)."""
        c = self.counts[group]
        return float("inf") if c.min() == 0 else float(c.max() / c.min())

    def shot_groups(self, group: int = 0) -> dict[str, list[int]]:
        """``{"many": [class indices], "medium": [...], "few": [...]}`` for one label group."""
        out = {"many": [], "medium": [], "few": []}
        for i, n in enumerate(self.counts[group]):
            out[self.thresholds.group(int(n))].append(i)
        return out

    def to_dict(self) -> dict:
        groups = []
        for gi, g in enumerate(self.schema.groups):
            shots = self.shot_groups(gi)
            groups.append({
                "group": g.name,
                "counts": {c: int(n) for c, n in zip(g.classes, self.counts[gi])},
                "total": int(self.counts[gi].sum()),
                "imbalance_ratio": self.imbalance_ratio(gi),
                "shot_groups": {k: [g.classes[i] for i in v] for k, v in shots.items()},
            })
        return {"thresholds": {"many": self.thresholds.many, "few": self.thresholds.few}, "groups": groups}

    def format(self) -> str:
        lines = []
        for gi, g in enumerate(self.schema.groups):
            shots = self.shot_groups(gi)
            lines.append(f"{g.name}: {int(self.counts[gi].sum())} images, {len(g.classes)} classes, "
                         f"imbalance ratio {self.imbalance_ratio(gi):.1f}")
            width = max(len(c) for c in g.classes)
            for ci, (c, n) in enumerate(zip(g.classes, self.counts[gi])):
                shot = next(k for k, v in shots.items() if ci in v)
                lines.append(f"  {c:<{width}}  {int(n):>7}  {shot}")
        return "\n".join(lines)

    def bar_chart(self, path: str | Path, title: str = "Training images per class") -> Path:
        """Writes a bar chart of class counts (one panel per label group), coloured by shot group."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colours = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
        n = len(self.schema.groups)
        fig, axes = plt.subplots(1, n, figsize=(max(5.0, 0.45 * self.schema.num_outputs + 1.5 * n), 3.8),
                                 squeeze=False)
        for gi, (ax, g) in enumerate(zip(axes[0], self.schema.groups)):
            counts = self.counts[gi]
            ax.bar(range(len(counts)), counts,
                   color=[colours[self.thresholds.group(int(c))] for c in counts])
            ax.set_xticks(range(len(counts)), g.classes, rotation=60 if max(map(len, g.classes)) > 3 else 0,
                          ha="right" if max(map(len, g.classes)) > 3 else "center", fontsize=8)
            ax.set_title(g.name if n > 1 else title, fontsize=9)
            ax.set_ylabel("images" if gi == 0 else "")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
        names = [f"many (>{self.thresholds.many})", f"medium ({self.thresholds.few}–{self.thresholds.many})",
                 f"few (<{self.thresholds.few})"]
        if n == 1:
            axes[0][0].legend(handles, names, loc="upper right", fontsize=8)
        else:
            fig.legend(handles, names, loc="lower right", fontsize=8, ncol=3)
        if n > 1:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
