"""RadixTree + PagePool driven by random operation sequences, checked against a naive model.

The model is a dict: every cached page-aligned token prefix -> the page id holding its last page.
Requests are interleaved the way the engine runs them: `start` matches, locks and allocates;
`finish` (possibly much later, after other requests cached the same tokens) inserts, frees the
duplicates and unlocks. Tokens come from a 3-letter alphabet so prefixes collide all the time.
After every step: both integrity checks, the tree's contents equal the model, no page leaks and
every held lock handle still ends where it did.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pcjax.cache.page_pool import PagePool
from pcjax.cache.policies import make_policy
from pcjax.cache.radix_tree import RadixTree
from tests.cache.tree_utils import SizeKeyedPolicy, check, contents, path_tokens

TOKENS = st.lists(st.integers(0, 2), max_size=9)
CAPACITY = 12


class TreeMachine(RuleBasedStateMachine):
    page_size = 1

    @initialize(policy=st.sampled_from(["lru", "fifo", "lfu", "size"]))
    def setup(self, policy):
        policy = SizeKeyedPolicy() if policy == "size" else make_policy(policy)
        self.tree = RadixTree(PagePool(CAPACITY + 1), self.page_size, policy)
        self.model: dict[tuple, int] = {}
        self.pending = []  # (tokens, MatchResult, new pages): started, not yet inserted
        self.held = []  # (handle, tokens it ends at): locks of finished requests

    # --- the model ---------------------------------------------------------------------------

    def _aligned(self, tokens):
        return tuple(tokens[: len(tokens) - len(tokens) % self.page_size])

    def _expected_match(self, tokens, limit):
        P, pages = self.page_size, []
        while len(pages) * P + P <= limit and tokens[: (len(pages) + 1) * P] in self.model:
            pages.append(self.model[tokens[: (len(pages) + 1) * P]])
        return pages

    def _locked_prefixes(self, *extra_ends):
        ends = [t[: m.num_tokens] for t, m, _ in self.pending] + [t for _, t in self.held]
        ends += extra_ends
        P = self.page_size
        return {end[: i * P] for end in ends for i in range(1, len(end) // P + 1)}

    def _check_match(self, tokens, cut):
        m = self.tree.match(tokens, max_tokens=cut)
        expected = self._expected_match(tokens, min(cut, len(tokens)))
        assert m.pages == expected and m.num_tokens == len(expected) * self.page_size
        assert path_tokens(m.node) == tokens[: m.num_tokens]
        return m

    def _evict(self, n, *extra_locked_ends):
        before, locked = dict(self.model), self._locked_prefixes(*extra_locked_ends)
        freed = self.tree.evict(n)
        after = contents(self.tree)
        assert freed == min(n, len(before) - len(locked)) == len(before) - len(after)
        assert after.items() <= before.items() and locked <= after.keys()
        self.model = after

    # --- operations --------------------------------------------------------------------------

    @rule(tokens=TOKENS, cut=st.integers(0, 9))
    def start(self, tokens, cut):
        self._start(tokens, cut)

    @rule(tokens=TOKENS, cut=st.integers(0, 9), keep_lock=st.booleans())
    def request(self, tokens, cut, keep_lock):
        """A request that runs alone: start and finish at once."""
        if self._start(tokens, cut):
            self._finish(len(self.pending) - 1, keep_lock)

    def _start(self, tokens, cut) -> bool:
        tokens = self._aligned(tokens)
        m = self._check_match(tokens, cut)
        self.tree.lock(m.node)
        need = len(tokens) // self.page_size - len(m.pages)
        if self.tree.pool.num_free < need:
            self._evict(need - self.tree.pool.num_free, tokens[: m.num_tokens])
        if self.tree.pool.num_free < need:
            self.tree.unlock(m.node)  # cannot be admitted now
            return False
        self.pending.append((tokens, m, self.tree.pool.allocate(need)))
        return True

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), keep_lock=st.booleans())
    def finish(self, data, keep_lock):
        self._finish(data.draw(st.integers(0, len(self.pending) - 1)), keep_lock)

    def _finish(self, index, keep_lock):
        tokens, m, new = self.pending.pop(index)
        pages, P = m.pages + new, self.page_size
        prefixes = [tokens[: (i + 1) * P] for i in range(len(pages))]
        existing = [p for p in prefixes if p in self.model]
        owned = [self.model.get(p) for p in prefixes]  # None: not cached yet
        duplicates = [page for o, page in zip(owned, pages, strict=True) if o not in (None, page)]
        r = self.tree.insert(tokens, pages)
        assert r.num_existing_tokens == len(existing) * P
        assert r.duplicate_pages == duplicates
        assert path_tokens(r.node) == tokens
        self.model.update(
            {p: pg for p, pg in zip(prefixes, pages, strict=True) if p not in self.model}
        )
        assert self.tree.path_pages(r.node) == [self.model[p] for p in prefixes]
        self.tree.pool.free(r.duplicate_pages)
        if keep_lock:
            self.tree.lock(r.node)
            self.held.append((r.node, tokens))
        self.tree.unlock(m.node)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data):
        node, _ = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.tree.unlock(node)

    @rule(n=st.integers(0, CAPACITY + 2))
    def evict(self, n):
        self._evict(n)

    @rule(tokens=TOKENS, cut=st.integers(0, 9))
    def match_only(self, tokens, cut):
        self._check_match(tuple(tokens), cut)

    @rule()
    def reset(self):
        self._evict(self.tree.num_evictable_pages)
        assert self.tree.num_evictable_pages == 0

    # --- after every step --------------------------------------------------------------------

    @invariant()
    def agrees_with_model(self):
        tree, pool = self.tree, self.tree.pool
        check(tree)
        assert contents(tree) == self.model
        assert tree.num_cached_pages == len(self.model) == pool.num_cached
        assert tree.num_locked_pages == len(self._locked_prefixes())
        assert pool.num_in_use == sum(len(new) for _, _, new in self.pending)
        for tokens, m, _ in self.pending:
            assert path_tokens(m.node) == tokens[: m.num_tokens]
        for node, tokens in self.held:
            assert path_tokens(node) == tokens


def _test_case(page_size):
    machine = type(f"TreeMachineP{page_size}", (TreeMachine,), {"page_size": page_size})
    machine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
    return machine.TestCase


TestTreeP1 = _test_case(1)
TestTreeP2 = _test_case(2)
TestTreeP3 = _test_case(3)
