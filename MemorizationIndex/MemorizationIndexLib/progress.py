"""One progress count over several inputs (volumes and sets), for a single bar with time left.

Each input reports ``(done, total)`` of its own slices; :class:`OverallProgress` turns these into
``(done, total)`` over all inputs. A set's slice count is known from its headers before any work;
a volume's only once it is read, so until then it is estimated as the mean of the inputs counted
so far (the total, and the time left, firm up as volumes are read). With one input the counts pass
through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from .embedding import ProgressCallback


class OverallProgress:
    """Progress over inputs whose slice counts are given (int) or not yet known (None)."""

    def __init__(self, callback: ProgressCallback | None, counts: Sequence[int | None]):
        self.callback = callback
        self.counts = list(counts)
        self.finished = 0  # slices of the inputs before the current one

    def _total(self, current: int, total: int) -> int:
        known = [c for i, c in enumerate(self.counts) if c is not None and i != current]
        seen = known + [total]
        estimate = round(sum(seen) / len(seen))
        rest = sum(c if c is not None else estimate for c in self.counts[current + 1 :])
        return self.finished + total + rest

    def part(self, current: int) -> ProgressCallback | None:
        """The callback for input number ``current`` (inputs are worked through in order)."""
        if self.callback is None:
            return None

        def report(done: int, total: int) -> None:
            self.callback(self.finished + done, self._total(current, total))
            if done >= total:
                self.counts[current] = total

        return report

    def finish(self, current: int, total: int) -> None:
        """Input ``current`` is done with ``total`` slices (also when it reported no progress)."""
        self.counts[current] = total
        self.finished += total
