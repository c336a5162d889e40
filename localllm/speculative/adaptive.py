"""When drafting pays, measured: per loaded model, how long a forward pass of n tokens
takes on this machine now, and how often drafts are accepted.

A verification feeds the pending token and k drafted ones in one pass that costs c(k+1)
instead of c(1), and yields every draft token up to the first the model disagrees with,
plus the model's own next token. If each draft token is accepted with probability a
(given the ones before it were), a verification yields E(k) = 1 + a + ... + a^k tokens,
so it beats plain decoding when E(k) * c(1) / c(k+1) > 1. How steeply c grows with n
depends on the model, the backend and how busy the machine is (on a loaded 2-core
machine a 9-token pass of SmolLM2 measured 3.9x a 1-token pass; on a GPU it is ~1x), so
c is measured, not assumed: every forward the producers make is timed, per n, and the
median of the recent ones is used. Acceptance is kept per match length (a 3-token
n-gram match is right far more often than a 1-token one) with old outcomes fading out.

In the engine's shared batch (several requests decoding in one pass of n tokens, each
yielding one), k drafts make that pass cost c(n+k) instead of c(n) for everyone, and it
yields E(k) instead of 1 for the drafting request. The policy maximizes what the whole
batch yields per second: draft when (Y + E(k)) / (Y + 1) * c(n) / c(n+k) > 1, Y being
what the pass yields for the others. Alone (n = 1, Y = 0) that is the rule above. Passes
of several sequences are timed into a table of their own (`batch_costs`): a pass of 4
tokens from 4 short sequences is not a pass of 4 tokens of one long one (SmolLM2-135M, 2
threads: 25 ms against 39 ms), and one mixed table made c(5) look cheaper than c(4) in the
batch, so drafts were verified there at a loss (4 streams 6% slower than plain decoding).
What k more tokens add to a batched pass not yet measured is taken from what they add to
a pass alone. Where not even drafts that are always right would pay in the batch (on a
2-core CPU a token more costs a batched pass about as much as the token it may yield),
drafting in the batch is off (`batch_quiet`, decided once per pass shape): no proposal;
it is derived again whenever the costs are. Nor does the batch probe: a one-token probe
there costs every sequence in the pass (SmolLM2, 4 streams: a quarter of a pass for at
most one token), so drafts in the batch rest on the acceptance learned so far.

Where drafting does not pay, a draft is still tried now and then (the whole draft, so
that the pass drafting would run is measured, not extrapolated; with a growing interval
while those probes fail) so that text that turns repetitive later (the model starts
quoting) switches drafting back on.

Drafting off costs next to nothing. When a sequence decodes alone and no match length's
acceptance (nor the prior's) makes any draft pay, drafting is off altogether: one global
probe interval replaces the per-length ones, and `quiet` tells the caller which steps need
no proposal at all (the drafter's index catches up when the next one is asked for). On a
model as small as stories260K a step takes ~300 us, and looking for a match, choosing and
indexing every step cost ~8% of decode speed. The engine's scheduler goes further
(`quiet_steps`): it runs such a stretch of steps as plain decoding, at its exact cost.

Plain steps run while drafting is off are timed too, so c(1) follows the depth decoding
is at: a server whose first request was short had c(1) from ~30 cached tokens (11 ms on
SmolLM2) against probes at ~400 (29 ms), judged drafting hopeless and probed once in
PROBE_RARE steps, so the benchmark's copying stream that drafts to 1.7x decoded plainly.
The hopeless verdict is checked again whenever the costs are derived again.

Probes are not free on llama.cpp: it reuses its compute graph only between passes of one
shape, so a 2-token probe and the plain pass after it both build a graph (on stories260K
the pair costs 1.5 plain steps more). That cost is charged to the larger pass
(`ForwardCosts.record`), and where not even drafts that are always right would pay at the
measured costs, probes come only every PROBE_RARE steps, to re-measure.
"""

from __future__ import annotations

import statistics
from collections import deque

from localllm.speculative.drafter import Draft

RECENT_TIMINGS = 16  # forward timings kept per size
PRIOR_SLOPE = 0.25  # c(n) grows by this fraction of c(1) per extra token until measured
ACCEPTANCE_PRIOR = (0.6, 2.0)  # (accepted, trials) before any outcome: a = 0.3
FADE = 0.9  # weight left to older outcomes after each verification of that match length
MARGIN = 1.05  # draft only where the expected speed-up beats noise
PROBE_FIRST, PROBE_MOST = 4, 64  # drafts skipped between probes, first and at most
PROBE_SHARE = 0.01  # failing probes may cost about this share of decode time
# Where no acceptance makes any draft pay at the measured costs (stories260K: a 2-token
# pass costs 2.5 plain steps), probes only re-measure: one in this many steps.
PROBE_RARE = 1024
REFRESH_EVERY = 32  # timed forwards between re-derivations of the draft-length choices
DRAFT_TABLE = 16  # draft lengths the choices are first derived for


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one verification of k drafted tokens yields: 1 + a + ... + a^k."""
    a = min(acceptance, 0.99)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


class ForwardCosts:
    """Recent wall-clock seconds of a forward pass (and its sampling) of n tokens."""

    def __init__(self):
        self._seconds: dict[int, deque[float]] = {}
        self._median: dict[int, float] = {}
        self._stale: set[int] = set()  # sizes timed since their median was last taken
        self.last_size: int | None = None  # the size of the last pass timed

    def record(self, n_tokens: int, seconds: float | None) -> None:
        """Returns nothing and sorts nothing: it runs after every forward pass, the
        medians are taken when asked for.

        llama.cpp reuses its compute graph only between passes of the same shape, so the
        first pass after a larger one (plain decoding after a verification) builds its
        graph again: on stories260K that costs half a plain step. It is a cost of the
        larger pass (of drafting), not of steady decoding: the excess of a 1-token pass
        after a larger one over the 1-token median goes to the larger pass's last timing.
        `seconds` None: a pass that was not timed (a prompt's), which breaks that chain;
        the next pass of a size already measured builds its graph again, not recorded."""
        if seconds is None:
            self.last_size = None
            return
        last, self.last_size = self.last_size, n_tokens
        if last is None and n_tokens in self._seconds:
            return  # after a pass not timed (a prompt), it builds its graph again
        if n_tokens == 1 and last is not None and last > 1:
            steady = self._medians().get(n_tokens)
            if steady is not None:
                self._seconds[last][-1] += seconds - steady
                self._stale.add(last)
                return
        timings = self._seconds.get(n_tokens)
        if timings is None:
            timings = self._seconds[n_tokens] = deque(maxlen=RECENT_TIMINGS)
        timings.append(seconds)
        self._stale.add(n_tokens)

    def _medians(self) -> dict[int, float]:
        if self._stale:
            for n in self._stale:
                self._median[n] = statistics.median(self._seconds[n])
            self._stale.clear()
        return self._median

    def measured(self, n_tokens: int) -> float | None:
        return self._medians().get(n_tokens)

    def estimate(self, n_tokens: int) -> float | None:
        """c(n): measured, else interpolated between measured sizes, else extrapolated
        from the largest measured one with the steeper of its slope and PRIOR_SLOPE.
        None until a 1-token pass was measured."""
        medians = self._medians()
        c1 = medians.get(1)
        if c1 is None:
            return None
        exact = medians.get(n_tokens)
        if exact is not None:
            return exact
        below = max(s for s in medians if s < n_tokens)
        above = min((s for s in medians if s > n_tokens), default=None)
        c_below = medians[below]
        if above is not None:
            return c_below + (medians[above] - c_below) * (n_tokens - below) / (above - below)
        slope = PRIOR_SLOPE * c1
        if below > 1:
            slope = max(slope, (c_below - c1) / (below - 1))
        return c_below + slope * (n_tokens - below)

    def sizes(self) -> list[int]:
        """The pass sizes measured."""
        return list(self._medians())

    def is_measured(self, n_tokens: int) -> bool:
        return n_tokens in self._seconds

    def ratio(self, n_tokens: int) -> float | None:
        """c(n) / c(1), for reports."""
        c1, cn = self.measured(1), self.measured(n_tokens)
        return cn / c1 if c1 and cn is not None else None


class _Acceptance:
    """Fading counts of draft tokens accepted out of those tried, for one match length,
    and the draft lengths they make worth verifying (derived when first needed)."""

    __slots__ = ("accepted", "trials", "skipped", "probe_interval", "best_k")

    def __init__(self):
        self.accepted, self.trials = ACCEPTANCE_PRIOR
        self.skipped = 0
        self.probe_interval = PROBE_FIRST
        # best_k[m]: the k <= m with the best expected speed-up (0: none beats MARGIN);
        # None when the counts or the costs changed since.
        self.best_k: list[int] | None = None

    @property
    def rate(self) -> float:
        return self.accepted / self.trials


class AdaptiveDraftPolicy:
    """Decides per step how many drafted tokens to verify (0: a plain step). One per
    loaded model (the engine keeps it), so what it learned carries over between requests.
    Used from the engine thread only.

    `choose` runs before every token, so it only looks up a table per match length
    (`_Acceptance.best_k`); the table is derived again after a verification of that
    length and, for all lengths, every REFRESH_EVERY timed forwards or when a forward
    of a new size was first timed."""

    def __init__(self):
        self.costs = ForwardCosts()  # passes of one sequence (decoding alone)
        self.batch_costs = ForwardCosts()  # passes of several sequences (the shared batch)
        self._by_match: dict[int, _Acceptance] = {}
        self._timed_since_refresh = 0
        # Whether no draft pays alone for any match length (None: derive again).
        self._off: bool | None = None
        self._k_most = DRAFT_TABLE  # the largest draft length asked about
        # While off: the steps left before the next probe, and the interval between probes.
        self._quiet_left = PROBE_FIRST - 1
        self._probe_gap = PROBE_FIRST
        # (n_tokens, others, k_max) -> whether no draft pays in such a batched pass.
        self._batch_quiet: dict[tuple[int, float, int], bool] = {}
        # Whether the draft last chosen is a probe, and the size of the last probe's pass.
        self._probing = False
        self._probe_tokens = 2

    def acceptance(self, match_length: int) -> float:
        return self._stats(match_length).rate

    def _stats(self, match_length: int) -> _Acceptance:
        stats = self._by_match.get(match_length)
        if stats is None:
            stats = _Acceptance()
            # A longer match is right at least as often as a shorter one: a new length
            # starts from the rate the longest shorter one learned (at the prior's
            # weight), so a copy that grows into the next class keeps drafting.
            shorter = [m for m in self._by_match if m < match_length]
            if shorter:
                stats.accepted = max(stats.accepted, self._by_match[max(shorter)].rate * stats.trials)
            self._by_match[match_length] = stats
        return stats

    def choose(self, draft: Draft, k_max: int, n_tokens: int = 1, others: float = 0.0) -> int:
        """How many of `draft.tokens` (at most `k_max`) to verify; 0 for a plain step.
        `n_tokens`: tokens of the pass with the pending token but no draft; `others`: what
        the pass yields for other sequences decoding in it (0 alone)."""
        limit = min(len(draft.tokens), k_max)
        if n_tokens > 1 or others:  # in the batch: no probes, they would slow every sequence in the pass
            if self.batch_quiet(n_tokens, others, limit):
                return 0
            return self._best_in_batch(self._stats(draft.match_length).rate, limit, n_tokens, others)
        if k_max > self._k_most:
            self._k_most, self._off = k_max, None
        if self.is_off():  # off: a probe every `_probe_gap` steps
            if self._quiet_left:
                self._quiet_left -= 1
                return 0
            self._quiet_left = self._probe_gap - 1
            return self._probe(limit)
        stats = self._stats(draft.match_length)
        best = stats.best_k  # alone: the table derived for this match length
        if best is None or limit >= len(best):
            best = stats.best_k = self._best_ks(stats.rate, max(limit, DRAFT_TABLE))
            if best is None:
                return 0  # measure a plain step first
        k = best[limit]
        if k:
            return k
        stats.skipped += 1
        if stats.skipped >= stats.probe_interval:
            stats.skipped = 0
            return self._probe(limit)
        return 0

    def _probe(self, limit: int) -> int:
        """A probe verifies the whole draft (up to k_max): it measures the pass that
        drafting would run, not a 2-token pass to extrapolate from. The cost of a pass does
        not grow linearly with its tokens: on an AVX-512 EPYC (2 threads) SmolLM2's 2-token
        pass took 15 ms against 7.1 for one, its 9-token pass 34; extrapolated from c(2),
        c(9) looked like 71 ms, no draft could pay, and the benchmark's copying stream
        decoded plainly at half the speed of always drafting."""
        self._probing = True
        self._probe_tokens = limit + 1
        return limit

    def batch_quiet(self, n_tokens: int, others: float, k_max: int) -> bool:
        """For a sequence in a pass of `n_tokens` with others yielding `others`: True when
        no draft of up to `k_max` tokens would pay there even if always right, at the costs
        measured (or while c(1) or the plain batched pass is not measured yet). Then the
        step needs no proposal at all. Decided once per pass shape until the costs are
        derived again: asking per sequence and step cost 4 streams of SmolLM2 5%."""
        key = (n_tokens, others, k_max)
        quiet = self._batch_quiet.get(key)
        if quiet is None:
            quiet = self._batch_quiet[key] = (self.costs.estimate(1) is None
                                              or self.batch_costs.measured(n_tokens) is None
                                              or not self._best_in_batch(1.0, k_max, n_tokens, others))
        return quiet

    def is_off(self) -> bool:
        """Whether, decoding alone, no draft of any length pays at the best acceptance
        any match length learned (a new length starts from at most that, or the prior).
        False until a plain step was timed."""
        off = self._off
        if off is None:
            rate = max([stats.rate for stats in self._by_match.values()], default=0.0)
            best = self._best_ks(max(rate, ACCEPTANCE_PRIOR[0] / ACCEPTANCE_PRIOR[1]), self._k_most)
            if best is None:
                return False
            off = self._off = best[-1] == 0
        return off

    def _probe_most(self) -> int:
        """The longest interval between probes: PROBE_MOST, or more where a probe costs
        so much that PROBE_MOST would spend over PROBE_SHARE of the time on them."""
        ratio = self.costs.ratio(self._probe_tokens) or self.costs.ratio(2)
        if ratio is None:
            return PROBE_MOST
        return max(PROBE_MOST, min(4 * PROBE_MOST, int((ratio - 1.0) / PROBE_SHARE)))

    def quiet(self) -> bool:
        """For a sequence decoding alone, before its step: True when this step needs no
        proposal (drafting is off and no probe is due), counted as a step without a draft."""
        if self._quiet_left and (self._off or (self._off is None and self.is_off())):
            self._quiet_left -= 1
            return True
        return False

    def quiet_steps(self) -> int:
        """For a sequence decoding alone: how many steps from now need no proposal
        (drafting is off, no probe due), all counted at once as steps without a draft; 0
        when this one may draft or probe (or is the last before a probe). The caller runs
        them as plain decoding and hands back with `unquiet` those it did not run (its
        request ended first), so the probe interval carries over to the next request as it
        does step by step."""
        # The last quiet step before a probe stays a step of its own, timed, so that c(1)
        # is still measured while drafting is off.
        # After a larger pass (a probe), the next plain step is timed too: what it costs
        # over a steady one is the probe's (`ForwardCosts.record`).
        # At most REFRESH_EVERY at once: the caller times them (c(1) at the depth decoding
        # is now), and a re-derivation in between may shorten the interval (`record_forward`).
        n = min(self._quiet_left - 1, REFRESH_EVERY)
        if n > 0 and self.costs.last_size in (1, None) and (self._off or (self._off is None and self.is_off())):
            self._quiet_left -= n
            return n
        return 0

    def unquiet(self, steps: int) -> None:
        """`steps` of those `quiet_steps` counted were not run."""
        self._quiet_left += steps

    def expected_tokens(self, draft: Draft, k: int) -> float:
        """What verifying k tokens of `draft` yields on average, from the acceptance seen."""
        return expected_tokens(self.acceptance(draft.match_length), k)

    def _best_ks(self, acceptance: float, most: int) -> list[int] | None:
        """best[m] for m = 0..most: the k <= m maximizing E(k) c(1) / c(k+1), if above MARGIN."""
        c1 = self.costs.estimate(1)
        if c1 is None:
            return None
        best, best_k, best_gain = [0], 0, MARGIN
        for k in range(1, most + 1):
            gain = expected_tokens(acceptance, k) * c1 / self.costs.estimate(k + 1)
            if gain > best_gain:
                best_k, best_gain = k, gain
            best.append(best_k)
        return best

    def _best_in_batch(self, acceptance: float, limit: int, n_tokens: int, others: float) -> int:
        """The k <= limit maximizing (Y + E(k)) / (Y + 1) * c(n) / c(n+k), if above MARGIN,
        at the costs of passes of several sequences (`_batch_estimate`)."""
        c_n = self._batch_estimate(n_tokens)
        best_k, best_gain = 0, MARGIN
        for k in range(1, limit + 1):
            gain = (others + expected_tokens(acceptance, k)) / (others + 1) * c_n / self._batch_estimate(n_tokens + k)
            if gain > best_gain:
                best_k, best_gain = k, gain
        return best_k

    def _batch_estimate(self, n_tokens: int) -> float:
        """c(n) of a pass of several sequences: measured, else interpolated between the
        batched sizes measured, else the largest batched size below n plus what the extra
        tokens add to a pass alone (`_added_alone`; asked only once c(1) and the plain
        batched pass were measured)."""
        batch = self.batch_costs
        exact = batch.measured(n_tokens)
        if exact is not None:
            return exact
        sizes = batch.sizes()
        below = max(s for s in sizes if s < n_tokens)
        above = min((s for s in sizes if s > n_tokens), default=None)
        c_below = batch.measured(below)
        if above is not None:
            return c_below + (batch.measured(above) - c_below) * (n_tokens - below) / (above - below)
        return c_below + self._added_alone(n_tokens - below)

    def _added_alone(self, k: int) -> float:
        """What k more tokens add to a pass alone: c(1 + k) - c(1), or more where the
        passes of 2 tokens and up grow more steeply. While drafts pay, plain steps are
        rare and c(1) is old (measured under another load): SmolLM2 read c(1) 22 ms and
        c(2) 26 ms, 4 ms a token, where its 2- to 9-token passes grew 9 ms a token and a
        batched pass 6.5 ms; the 4 ms made drafts in the batch look as if they paid."""
        alone = self.costs
        added = alone.estimate(1 + k) - alone.estimate(1)
        sizes = [n for n in alone.sizes() if n > 1]
        if len(sizes) > 1:
            lo, hi = min(sizes), max(sizes)
            added = max(added, k * (alone.measured(hi) - alone.measured(lo)) / (hi - lo))
        return added

    def record_forward(self, n_tokens: int, seconds: float | None, sequences: int = 1) -> None:
        """A pass of `n_tokens` over `sequences` sequences took `seconds` (None: a pass not
        timed, see `ForwardCosts.record`)."""
        costs = self.costs if sequences == 1 else self.batch_costs
        if seconds is None:
            costs.record(n_tokens, None)
            return
        new_size = not costs.is_measured(n_tokens)
        costs.record(n_tokens, seconds)
        self._timed_since_refresh += 1
        if new_size or self._timed_since_refresh >= REFRESH_EVERY:
            self._timed_since_refresh = 0
            self._batch_quiet.clear()
            self._off = None
            for stats in self._by_match.values():
                stats.best_k = None
            if self._probe_gap == PROBE_RARE and not self._hopeless():
                # Hopeless no more at the costs measured since (c(1) timed on a short
                # prompt, c(2) on a long one had said so): probe as often as drafting off does.
                self._probe_gap = self._probe_most()
                self._quiet_left = min(self._quiet_left, self._probe_gap - 1)

    def record_verification(self, match_length: int, k: int, accepted: int) -> None:
        """`accepted` of `k` drafted tokens were confirmed (all before the first rejection)."""
        stats = self._stats(match_length)
        trials = accepted + (accepted < k)
        stats.accepted = stats.accepted * FADE + accepted
        stats.trials = stats.trials * FADE + trials
        stats.best_k = None
        self._off = None
        probe, self._probing = self._probing or k == 1, False
        if probe:
            # Probes back off while they fail, up to where they cost about PROBE_SHARE of
            # the time (a probe costs c(k+1) - c(1): on stories260K c(2) is a whole step). A success
            # turns drafting on only through the acceptance it raises, so it leaves the
            # interval as it is: where drafts are right half the time (free text on a tiny
            # vocabulary) probes still become rare. Per match length and, while all is
            # off, the one interval that applies then.
            if self._hopeless():
                self._probe_gap = PROBE_RARE
            elif not accepted:
                most = self._probe_most()
                stats.probe_interval = min(most, stats.probe_interval * 2)
                self._probe_gap = min(most, self._probe_gap * 2)
            self._quiet_left = self._probe_gap - 1

    def _hopeless(self) -> bool:
        """Whether, decoding alone, not even drafts that are always right would pay at the
        costs measured (then the probes while all is off only re-measure them)."""
        best = self._best_ks(1.0, self._k_most)
        return best is not None and best[-1] == 0


class AlwaysDraftPolicy:
    """`--draft prompt-lookup`: verify every draft, as long as allowed; timings and
    outcomes still go to the model's adaptive policy, so `auto` learns from these runs."""

    def __init__(self, learner: AdaptiveDraftPolicy):
        self.learner = learner

    def choose(self, draft: Draft, k_max: int, n_tokens: int = 1, others: float = 0.0) -> int:
        return min(len(draft.tokens), k_max)

    def quiet(self) -> bool:
        return False

    def batch_quiet(self, n_tokens: int, others: float, k_max: int) -> bool:
        return False

    def quiet_steps(self) -> int:
        return 0

    def unquiet(self, steps: int) -> None:
        pass

    def expected_tokens(self, draft: Draft, k: int) -> float:
        return self.learner.expected_tokens(draft, k)

    def record_forward(self, n_tokens: int, seconds: float | None, sequences: int = 1) -> None:
        self.learner.record_forward(n_tokens, seconds, sequences)

    def record_verification(self, match_length: int, k: int, accepted: int) -> None:
        self.learner.record_verification(match_length, k, accepted)
