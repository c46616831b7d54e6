"""The capacity model against queueing theory where theory has a closed form."""
import math

import pytest

from bench import capacity_model as model

MU, LAMBDA = 100.0, 50.0    # a station serving 100 calls/s on average, offered 50


def one_station(quantum_ms: float = 5.0) -> model.Placement:
    return model.Placement(pools={"host": 1}, components={"svc": model.Component()}, quantum_ms=quantum_ms)


@pytest.fixture(scope="module")
def mm1() -> model.Result:
    route = model.Route("call", LAMBDA, bursts=(("svc", 1000 / MU),))
    return model.simulate(one_station(), [route], seconds=400, seed=7, cv=1.0)   # exponential: M/M/1


def test_a_single_station_matches_mm1s_mean_response_time(mm1):
    latencies = mm1.latencies_ms["call"]
    assert sum(latencies) / len(latencies) == pytest.approx(1000 / (MU - LAMBDA), rel=0.06)


def test_and_its_p99_the_exponential_sojourns(mm1):
    # M/M/1 FCFS: the time in the system is exponential with rate mu - lambda
    assert mm1.p("call", 99) == pytest.approx(1000 * math.log(100) / (MU - LAMBDA), rel=0.12)


def test_utilization_is_arrival_rate_times_demand(mm1):
    assert model.utilization(one_station(), mm1)["svc"] == pytest.approx(LAMBDA / MU, rel=0.05)


def test_a_delay_is_what_the_measured_p50_has_beyond_cpu():
    costs = {"routes": {"r": {"cpu_ms": {"envoy": 1.0, "user": 2.0, "noise": 5.0}, "p50_ms": 10.0, "p99_ms": 10.0}}}
    [route] = model.routes_from_costs(costs, {"r": 3.0})
    assert route.bursts == (("envoy", 1.0), ("user", 2.0)) and route.delay_ms == 7.0
    assert route.delay_sigma == 0.0     # p99 = p50: the delay never varies


def test_the_delays_spread_gives_back_the_measured_tail_at_low_load():
    costs = {"routes": {"r": {"cpu_ms": {"envoy": 0.1}, "p50_ms": 10.0, "p99_ms": 40.0}}}
    [route] = model.routes_from_costs(costs, {"r": 5.0})
    idle = model.Placement(pools={"host": 1}, components={"envoy": model.Component()})
    result = model.simulate(idle, [route], seconds=2000, seed=3)
    assert result.p("r", 50) == pytest.approx(10.0, rel=0.1)
    assert result.p("r", 99) == pytest.approx(40.0, rel=0.15)


def test_a_shared_pool_slows_what_runs_on_it():
    """Two stations each 40% busy: on one core they queue for it (together like one M/M/1 at 80%,
    three times the time alone); on cores of their own, each is an M/M/1 at 40% again."""
    routes = [model.Route("a", 20, bursts=(("a", 20.0),)), model.Route("b", 20, bursts=(("b", 20.0),))]
    shared = model.Placement(pools={"host": 1}, components={"a": model.Component(), "b": model.Component()})
    apart = model.Placement(pools={"one": 1, "two": 1}, components={
        "a": model.Component(pool="one"), "b": model.Component(pool="two")})
    together = model.simulate(shared, routes, seconds=300, cv=1.0)
    alone = model.simulate(apart, routes, seconds=300, cv=1.0)
    def mean(result: model.Result) -> float:
        return sum(result.latencies_ms["a"]) / len(result.latencies_ms["a"])
    assert mean(alone) == pytest.approx(1000 / (50 - 20), rel=0.1)
    assert mean(together) == pytest.approx(1000 / (50 - 40), rel=0.2)


def test_idle_work_keeps_its_share_of_the_pool_busy_and_slows_the_calls():
    """Background work of 0.5 cores on one core: the pool half busy with no calls, and a station's
    calls beside it served like an M/M/1 on what is left: its mean time in the system roughly doubles."""
    quiet = model.simulate(one_station(), [], seconds=200, idle={"host": 0.5})
    assert model.utilization(one_station(), quiet)["pool host"] == pytest.approx(0.5, rel=0.05)
    route = model.Route("call", 20.0, bursts=(("svc", 10.0),))
    alone = model.simulate(one_station(), [route], seconds=300, seed=5)
    beside = model.simulate(one_station(), [route], seconds=300, seed=5, idle={"host": 0.5})
    def mean(result: model.Result) -> float:
        return sum(result.latencies_ms["call"]) / len(result.latencies_ms["call"])
    assert 1.5 < mean(beside) / mean(alone) < 4


def test_the_load_generator_runs_first_when_asked():
    costs = {"routes": {"r": {"cpu_ms": {"envoy": 1.0}, "p50_ms": 10.0, "p99_ms": 10.0, "client_cpu_ms": 2.0}}}
    [route] = model.routes_from_costs(costs, {"r": 3.0}, with_client=True)
    assert route.bursts == (("client", 2.0), ("envoy", 1.0)) and route.delay_ms == 7.0


@pytest.mark.parametrize(("steps", "reached"), [
    ([(1, 0.5), (2, 1.5)], 1.5),               # halfway between the steps either side
    ([(1, 0.4), (2, 0.8), (3, 0.9)], 3),       # never reached: the last step
    ([(1, 0.5), (2, math.inf)], 1),            # broken by errors: the step before
    ([(1, 2.0)], 0.5),                         # the first step already past: from zero load
])
def test_capacity_is_where_the_worst_p99_reaches_its_slo(steps, reached):
    assert model.crossing(steps) == pytest.approx(reached)
