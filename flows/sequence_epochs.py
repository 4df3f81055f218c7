"""Duplicates and sequence epochs of a shard's machines, as columns indexed by machine.

A device numbers its readings with `seq`. A duplicate is a `(machine, seq)` already seen among the
machine's last `window` sequence numbers: one slot per `seq % window` holds the highest `seq // window + 1`
accepted there, so the memory covers the `window` numbers up to the highest seq, whatever the arrival order.

A device whose counter restarts (a reboot, a firmware update) sends sequence numbers seen before, which
would be dropped as duplicates. A reading starts a new *sequence epoch* of its machine when it

- is newer than every reading of its machine so far (its `ts` is above the machine's newest) and not late, and
- its `seq` lies more than `window` below the highest `seq` of the current epoch, or was seen in it:
  a re-sent reading carries its original event time, so a seen `seq` with a newer event time can only
  come from a restarted counter (this also catches a restart before the counter reached `window`).

A new epoch forgets the machine's duplicate memory and counts a reset. A reading older than the first
reading of its machine's current epoch arrives after the restart: it cannot be told apart from a re-sent
reading of the previous epoch, which was counted already, so unless it is a duplicate within the current
epoch it is `late` (dead-lettered, never counted twice).

Every outcome follows from the order of the machine's readings alone, so it does not depend on batch
boundaries. `judge` processes a batch in rounds, each vectorised over all machines: a round decides each
machine's readings up to its first reset, and only machines that reset take part in the next round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_NO_SEQ = -1
_NEVER = np.iinfo(np.int64).min // 4


@dataclass
class Verdict:
    """Per reading of a batch: dropped as a duplicate, or late; and the sequence resets the batch began."""

    duplicate: np.ndarray
    late: np.ndarray
    resets: int
    reset_rows: np.ndarray | None = None  # rows (positions in the batch) that began a new epoch; None: none


class SequenceEpochs:
    """Duplicate memory and sequence epoch of each machine of a shard (grown with the shard's machines)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.seen_generation = np.zeros((0, window), dtype=np.uint32)
        self.max_seq = np.zeros(0, dtype=np.int64)  # highest seq accepted in the current epoch (-1: none)
        self.epoch_start = np.zeros(0, dtype=np.int64)  # ts of the reading that began the current epoch
        self.resets = np.zeros(0, dtype=np.int64)  # sequence resets so far

    @classmethod
    def from_memory(cls, seen_generation: np.ndarray) -> SequenceEpochs:
        """Epochs around a duplicate memory of a snapshot from before epochs existed (one epoch each)."""
        epochs = cls(seen_generation.shape[1])
        epochs.seen_generation = seen_generation
        n = len(seen_generation)
        # The highest seq seen is still in the memory: only a higher seq overwrites its slot.
        epochs.max_seq = epochs._remembered().max(axis=1, initial=_NO_SEQ)
        epochs.epoch_start = np.full(n, _NEVER, dtype=np.int64)
        epochs.resets = np.zeros(n, dtype=np.int64)
        return epochs

    def fit(self, window: int, size: int) -> None:
        """Match a restored state to the configured `window` (DEDUP_SEQ_WINDOW may have changed: the
        remembered sequence numbers move to their slots of the new size) and to `size` machines."""
        if window != self.window:
            remembered = self._remembered()
            machine, _ = np.nonzero(remembered >= 0)
            seqs = remembered[remembered >= 0]
            self.window = window
            self.seen_generation = np.zeros((len(self.max_seq), window), dtype=np.uint32)
            np.maximum.at(self.seen_generation, (machine, seqs % window), (seqs // window + 1).astype(np.uint32))
        self.grow(size)

    def _remembered(self) -> np.ndarray:
        """The sequence numbers in the memory, per machine and slot (-1: an empty slot)."""
        seqs = (self.seen_generation.astype(np.int64) - 1) * self.window + np.arange(self.window)
        return np.where(self.seen_generation > 0, seqs, _NO_SEQ)

    def grow(self, size: int) -> None:
        extra = size - len(self.max_seq)
        if extra <= 0:
            return
        self.seen_generation = np.vstack((self.seen_generation, np.zeros((extra, self.window), dtype=np.uint32)))
        self.max_seq = np.concatenate((self.max_seq, np.full(extra, _NO_SEQ, dtype=np.int64)))
        self.epoch_start = np.concatenate((self.epoch_start, np.full(extra, _NEVER, dtype=np.int64)))
        self.resets = np.concatenate((self.resets, np.zeros(extra, dtype=np.int64)))

    def judge(
        self,
        midx: np.ndarray,
        seq: np.ndarray,
        ts: np.ndarray,
        newest_before: np.ndarray,
        window_late: np.ndarray,
        order: np.ndarray | None = None,
    ) -> Verdict:
        """Decide a batch (rows in arrival order) and remember its accepted readings.

        Per row: `newest_before` the newest `ts` of its machine before it (state and earlier rows);
        `window_late` its window is already closed. `order`: a stable argsort of `midx`, if at hand.
        A row is accepted when it is neither a duplicate nor late.
        """
        quick = self._quick(midx, seq, ts, newest_before, window_late)
        return quick if quick is not None else self._rounds(midx, seq, ts, newest_before, window_late, order)

    def _quick(
        self, midx: np.ndarray, seq: np.ndarray, ts: np.ndarray, newest_before: np.ndarray, window_late: np.ndarray
    ) -> Verdict | None:
        """The usual batch in one pass, or None: no slot of a machine twice in the batch (so the memory alone
        tells duplicates) and no row that could restart a counter (checked against an upper bound)."""
        slot = seq % self.window
        keys = np.sort(midx.astype(np.int64) * self.window + slot)
        if len(keys) > 1 and np.any(keys[1:] == keys[:-1]):
            return None
        generation = (seq // self.window + 1).astype(np.uint32)
        in_slot = self.seen_generation[midx, slot]
        seen = in_slot == generation
        outdated = window_late | (ts < self.epoch_start[midx])
        highest = self.max_seq.copy()  # with every row of the batch: at least the highest before each row
        np.maximum.at(highest, midx, seq)
        if np.any(~outdated & (ts > newest_before) & (seen | (seq + self.window < highest[midx]))):
            return None
        accepted = ~outdated & ~seen
        # Distinct slots, so one assignment; a slot keeps its higher generation (a seq more than `window` behind).
        self.seen_generation[midx[accepted], slot[accepted]] = np.maximum(in_slot, generation)[accepted]
        np.maximum.at(self.max_seq, midx[accepted], seq[accepted])
        return Verdict(seen, outdated & ~seen, 0)

    def _rounds(
        self,
        midx: np.ndarray,
        seq: np.ndarray,
        ts: np.ndarray,
        newest_before: np.ndarray,
        window_late: np.ndarray,
        order: np.ndarray | None,
    ) -> Verdict:
        """Any batch: round by round, each machine's rows up to its next reset."""
        n = len(seq)
        duplicate = np.zeros(n, dtype=bool)
        late = np.zeros(n, dtype=bool)
        resets = 0
        reset_rows: list[np.ndarray] = []
        pending = np.arange(n)
        while len(pending):
            whole = len(pending) == n  # the first round: arrays as they came, `order` applies
            m, s, t = (midx, seq, ts) if whole else (midx[pending], seq[pending], ts[pending])
            slot = s % self.window
            generation = (s // self.window + 1).astype(np.uint32)
            outdated = window_late[pending] | (t < self.epoch_start[m])
            valid = ~outdated
            # A slot as it stands before each row: the memory, raised by earlier valid rows of this round.
            slot_before = running_max_before(m.astype(np.int64) * self.window + slot, np.where(valid, generation, 0))
            seen = np.maximum(self.seen_generation[m, slot], slot_before) == generation
            # The epoch's highest seq counts valid rows only: a late straggler of an older epoch must not
            # make the next reading look like a restart.
            highest = np.maximum(
                self.max_seq[m], running_max_before(m, np.where(valid, s, _NO_SEQ), order if whole else None)
            )
            reset = valid & (t > newest_before[pending]) & (seen | (s + self.window < highest))
            # Each machine's rows before its first reset are decided now; the rest wait for the next round.
            position = np.arange(len(pending))
            first_reset = np.full(len(self.max_seq), len(pending))
            np.minimum.at(first_reset, m[reset], position[reset])
            decided = position < first_reset[m]
            duplicate[pending[decided]] = seen[decided]
            late[pending[decided]] = outdated[decided] & ~seen[decided]
            accepted = decided & valid & ~seen
            np.maximum.at(self.seen_generation, (m[accepted], slot[accepted]), generation[accepted])
            np.maximum.at(self.max_seq, m[accepted], s[accepted])
            restarted = np.flatnonzero(first_reset < len(pending))
            self.seen_generation[restarted] = 0
            self.max_seq[restarted] = _NO_SEQ
            self.epoch_start[restarted] = t[first_reset[restarted]]
            self.resets[restarted] += 1
            resets += len(restarted)
            reset_rows.append(pending[first_reset[restarted]])
            # A reset row opens the next round on an empty memory, where it is accepted.
            pending = pending[~decided]
        return Verdict(duplicate, late, resets, np.concatenate(reset_rows) if reset_rows else None)


def running_max_before(group: np.ndarray, values: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Per row: the largest of the integer `values` over earlier rows of the same `group` (a machine, or a
    machine's slot), or _NEVER. `order`: a stable argsort of `group`, if at hand."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if order is None:
        order = np.argsort(group, kind="stable")
    grouped, ordered = group[order], values[order].astype(np.int64, copy=False)
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(grouped[1:], grouped[:-1], out=first[1:])
    rank = np.cumsum(first)
    base = ordered.min()
    shifted = ordered - base
    # Offsetting each group's values into a range of its own lets one running maximum serve all groups:
    # as many groups at a time as fit into int64 (all of them, unless values span many years of ms).
    span = int(shifted.max()) + 1
    groups_per_pass = (1 << 62) // span
    if rank[-1] < groups_per_pass:
        offset = rank * span
        running = np.maximum.accumulate(offset + shifted) - offset
    else:
        running = np.empty(n, dtype=np.int64)
        for low in range(1, int(rank[-1]) + 1, groups_per_pass):
            a, b = np.searchsorted(rank, [low, low + groups_per_pass])
            offset = (rank[a:b] - low) * span
            running[a:b] = np.maximum.accumulate(offset + shifted[a:b]) - offset
    before = np.empty(n, dtype=np.int64)
    before[1:] = running[:-1]
    before += base
    before[first] = _NEVER
    result = np.empty(n, dtype=np.int64)
    result[order] = before
    return result
