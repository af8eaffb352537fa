"""The host KV store: placement in host memory, exact copies both ways, order, in-place updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcjax.cache import host_kv, kv_pages

L, NP, P, K, H = 2, 10, 3, 2, 4  # P = 3: not a power of two


def _device_cache(dtype):
    shape = (L, NP, P, K, H)
    k = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype)
    v = jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(dtype)
    cache = kv_pages.allocate_kv_cache(L, NP, P, K, H, dtype)
    return kv_pages.scatter_pages(cache, jnp.arange(NP), k, v), np.asarray(k), np.asarray(v)


def _host(dtype, num_slots=8):
    return host_kv.allocate_host_kv(L, num_slots, P, K, H, dtype, fill_value=float("nan"))


def test_the_store_lives_in_host_memory():
    store = _host(jnp.float32)
    kind = host_kv.host_memory_kind(jax.devices()[0])
    assert kind in ("pinned_host", "unpinned_host")
    assert all(a.sharding.memory_kind == kind for a in store.k + store.v)
    assert store.k[0].shape == (8, P, K, H) and np.isnan(np.asarray(store.v[1])).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pages_round_trip_exactly_through_the_host(dtype):
    device, k, v = _device_cache(dtype)
    store = host_kv.swap_out(_host(dtype), device, *host_kv.index_arrays([(7, 1), (2, 5), (9, 3)]))
    for slot, page in [(1, 7), (5, 2), (3, 9)]:
        for layer in range(L):
            assert np.array_equal(np.asarray(store.k[layer][slot]), k[layer, page])
            assert np.array_equal(np.asarray(store.v[layer][slot]), v[layer, page])
    device = host_kv.swap_in(device, store, *host_kv.index_arrays([(1, 4), (5, 8), (3, 1)]))
    got_k = np.stack([np.asarray(a) for a in device.k])
    for dst, src in [(4, 7), (8, 2), (1, 9)]:
        assert np.array_equal(got_k[:, dst], k[:, src])
        assert np.array_equal(np.asarray(device.v[1][dst]), v[1, src])
    untouched = [p for p in range(NP) if p not in (4, 8, 1)]
    assert np.array_equal(got_k[:, untouched], k[:, untouched])
    assert device.k[0].sharding.memory_kind == jax.devices()[0].default_memory().kind


def test_copies_run_in_order_and_update_in_place():
    device, k, _ = _device_cache(jnp.float32)
    store = _host(jnp.float32)
    pointers = [a.unsafe_buffer_pointer() for a in store.k + store.v]
    store = host_kv.swap_out(store, device, *host_kv.index_arrays([(2, 6), (3, 6)]))
    assert np.array_equal(np.asarray(store.k[0][6]), k[0, 3])  # the later copy wins
    assert pointers == [a.unsafe_buffer_pointer() for a in store.k + store.v]
    assert np.isnan(np.asarray(store.k[0][5])).all()  # nothing else written


def test_fill_slots_overwrites_only_the_listed_slots():
    device, _, _ = _device_cache(jnp.float32)
    store = host_kv.swap_out(_host(jnp.float32), device, *host_kv.index_arrays([(1, 1), (2, 2)]))
    ids, _, count = host_kv.index_arrays([(2, 2)])
    store = host_kv.fill_slots(store, ids, count)
    assert np.isnan(np.asarray(store.k[1][2])).all()
    assert not np.isnan(np.asarray(store.k[1][1])).any()


@pytest.mark.parametrize(("n", "bucket"), [(0, 8), (1, 8), (8, 8), (9, 16), (33, 64)])
def test_index_arrays_pad_to_a_power_of_two(n, bucket):
    src, dst, count = host_kv.index_arrays([(i, i + 1) for i in range(n)])
    assert src.shape == dst.shape == (bucket,) and count == n
    assert src[:n].tolist() == list(range(n)) and dst[:n].tolist() == list(range(1, n + 1))
