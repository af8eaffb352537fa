"""Two-tier RadixTree driven by random operations, with the bytes themselves modelled.

Every device page and host slot gets a modelled content: the token prefix whose KV it holds.
Requests run the way the engine runs them: `start` matches, locks, loads the host part back
(queued offloads issued first), allocates and "computes" its new pages; `finish` inserts, frees
duplicates and unlocks. Queued offloads are issued at every flush point (before loads, before
computing, at the end of each operation) and freed pages and slots are poisoned there, as the
engine's debug mode NaN-fills them. After every step: integrity of the tree and both pools, every
page and slot of every node holds its own prefix, lock handles still end where they did.
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pcjax.cache.page_pool import PagePool, PageState
from pcjax.cache.policies import make_policy
from pcjax.cache.radix_tree import RadixTree
from tests.cache.tree_utils import SizeKeyedPolicy, check, path_tokens, tier_contents

TOKENS = st.lists(st.integers(0, 2), max_size=9)
DEVICE_PAGES = 10
POISON = "poison"


class TwoTierMachine(RuleBasedStateMachine):
    page_size = 1

    @initialize(
        policy=st.sampled_from(["lru", "fifo", "lfu", "size"]),
        host_slots=st.integers(1, 14),
        write_through=st.booleans(),
    )
    def setup(self, policy, host_slots, write_through):
        policy = SizeKeyedPolicy() if policy == "size" else make_policy(policy)
        pool = PagePool(DEVICE_PAGES + 1, track_freed=True)
        host_pool = PagePool(host_slots + 1, track_freed=True)
        self.tree = RadixTree(
            pool, self.page_size, policy, host_pool=host_pool, write_through=write_through
        )
        self.device: dict[int, object] = {}  # page -> the prefix whose KV it holds
        self.host: dict[int, object] = {}  # slot -> the prefix whose KV it holds
        self.pending = []  # (tokens, locked node, pages) of started requests
        self.held = []  # (handle, tokens it ends at): locks of finished requests

    # --- bytes -------------------------------------------------------------------------------

    def _flush(self, loads=()):
        """Issues queued offloads, poisons what was freed, then performs ``loads``."""
        tree = self.tree
        for page, slot in tree.drain_offloads():
            assert self.device.get(page) not in (None, POISON), f"offload of a stale page {page}"
            self.host[slot] = self.device[page]
        for page in tree.pool.drain_freed():
            self.device[page] = POISON
        for slot in tree.host_pool.drain_freed():
            if tree.host_pool.state[slot] == PageState.FREE:
                self.host[slot] = POISON
        for slot, page in loads:
            assert self.host.get(slot) not in (None, POISON), f"load of a stale slot {slot}"
            self.device[page] = self.host[slot]

    # --- the expected answers ----------------------------------------------------------------

    def _aligned(self, tokens):
        return tuple(tokens[: len(tokens) - len(tokens) % self.page_size])

    def _expected_match(self, tokens, limit):
        """(device pages, host slots) of the longest cached prefix, device part first."""
        contents, P, pages, slots = tier_contents(self.tree), self.page_size, [], []
        for end in range(P, limit - limit % P + 1, P):
            if tokens[:end] not in contents:
                break
            page, slot = contents[tokens[:end]]
            if page is not None and not slots:
                pages.append(page)
            else:
                assert page is None, "device residency must be a prefix of the path"
                slots.append(slot)
        return pages, slots

    def _locked_prefixes(self):
        ends = [path_tokens(node) for _, node, _ in self.pending] + [t for _, t in self.held]
        P = self.page_size
        return {end[: i * P] for end in ends for i in range(1, len(end) // P + 1)}

    # --- operations --------------------------------------------------------------------------

    @rule(tokens=TOKENS, cut=st.integers(0, 9))
    def start(self, tokens, cut):
        self._start(tokens, cut)

    @rule(tokens=TOKENS, cut=st.integers(0, 9), keep_lock=st.booleans())
    def request(self, tokens, cut, keep_lock):
        if self._start(tokens, cut):
            self._finish(len(self.pending) - 1, keep_lock)

    def _start(self, tokens, cut) -> bool:
        tree, P = self.tree, self.page_size
        tokens = self._aligned(tokens)
        expected = self._expected_match(tokens, min(cut, len(tokens)))
        m = tree.match(tokens, max_tokens=cut)
        assert (m.pages, m.host_slots) == expected
        assert path_tokens(m.host_node) == tokens[: (len(m.pages) + len(m.host_slots)) * P]
        assert path_tokens(m.node) == tokens[: m.num_tokens]
        tree.lock(m.host_node)
        node = m.host_node
        if m.host_slots:
            short = len(m.host_slots) - tree.pool.num_free
            if short <= 0 or tree.evict(short) == short:
                self._flush(tree.load(m.host_node))
            else:  # no room to load: compute the host part again
                tree.lock(m.node)
                tree.unlock(m.host_node)
                node = m.node
        pages = tree.path_pages(node)
        need = len(tokens) // P - len(pages)
        if tree.pool.num_free < need:
            tree.evict(need - tree.pool.num_free)
        if tree.pool.num_free < need:
            tree.unlock(node)  # cannot be admitted now
            self._flush()
            return False
        new = tree.pool.allocate(need)
        self._flush()
        for i, page in enumerate(new, start=len(pages)):
            self.device[page] = tokens[: (i + 1) * P]  # the forward writes the new pages
        self.pending.append((tokens, node, pages + new))
        return True

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), keep_lock=st.booleans())
    def finish(self, data, keep_lock):
        self._finish(data.draw(st.integers(0, len(self.pending) - 1)), keep_lock)

    def _finish(self, index, keep_lock):
        tree, P = self.tree, self.page_size
        tokens, node, pages = self.pending.pop(index)
        before = tier_contents(tree)
        prefixes = [tokens[: (i + 1) * P] for i in range(len(pages))]
        owned = [before.get(p, (None, None))[0] for p in prefixes]
        duplicates = [pg for o, pg in zip(owned, pages, strict=True) if o not in (None, pg)]
        r = tree.insert(tokens, pages)
        assert r.duplicate_pages == duplicates
        assert r.num_existing_tokens == sum(p in before for p in prefixes) * P
        assert path_tokens(r.node) == tokens
        after = tier_contents(tree)
        assert tree.path_pages(r.node) == [after[p][0] for p in prefixes]
        tree.pool.free(r.duplicate_pages)
        if keep_lock:
            tree.lock(r.node)
            self.held.append((r.node, tokens))
        tree.unlock(node)
        self._flush()

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data):
        node, _ = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.tree.unlock(node)

    @rule(n=st.integers(0, DEVICE_PAGES + 2))
    def evict(self, n):
        tree = self.tree
        before, locked = tier_contents(tree), self._locked_prefixes()
        evictable, host_free = tree.num_evictable_pages, tree.host_pool.num_free
        freed = tree.evict(n)
        after = tier_contents(tree)
        on_device = [{p for p, (page, _) in c.items() if page is not None} for c in (before, after)]
        assert freed == min(n, evictable) == len(on_device[0]) - len(on_device[1])
        assert on_device[1] <= on_device[0]
        assert all(after[p] == before[p] for p in locked), "a locked prefix changed residency"
        if host_free >= n:  # no host eviction was needed: every victim went to the host
            assert after.keys() == before.keys()
        self._flush()

    @rule(tokens=TOKENS, cut=st.integers(0, 9))
    def match_only(self, tokens, cut):
        tokens = tuple(tokens)
        expected = self._expected_match(tokens, min(cut, len(tokens)))
        m = self.tree.match(tokens, max_tokens=cut)
        assert (m.pages, m.host_slots) == expected

    @rule(roll=st.integers(0, 3))
    def reset(self, roll):
        if roll:  # a reset wipes the state the other rules build: keep it rare
            return
        tree, locked = self.tree, self._locked_prefixes()
        tree.reset()
        assert tier_contents(tree).keys() == locked
        assert tree.num_evictable_pages == 0
        self._flush()

    # --- after every step --------------------------------------------------------------------

    @invariant()
    def bytes_and_handles_hold(self):
        tree = self.tree
        check(tree)
        tree.host_pool.check_integrity()
        assert not tree._offloads, "every operation ends with a flush"
        for prefix, (page, slot) in tier_contents(tree).items():
            if page is not None:
                assert self.device.get(page) == prefix, (prefix, page, self.device.get(page))
            if slot is not None:
                assert self.host.get(slot) == prefix, (prefix, slot, self.host.get(slot))
        assert tree.pool.num_in_use == sum(
            len(pages) - len(tree.path_pages(node)) for _, node, pages in self.pending
        )
        for tokens, node, _ in self.pending:
            assert path_tokens(node) == tokens[: len(path_tokens(node))]
        for node, tokens in self.held:
            assert path_tokens(node) == tokens


def _test_case(page_size):
    machine = type(f"TwoTierMachineP{page_size}", (TwoTierMachine,), {"page_size": page_size})
    machine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
    return machine.TestCase


TestTwoTierP1 = _test_case(1)
TestTwoTierP2 = _test_case(2)
