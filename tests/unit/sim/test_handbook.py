"""The Fraud Detection Handbook simulator: its customers, terminals and three fraud scenarios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataflow.sim.handbook import HandbookParams, Simulation, simulate
from operators.ingest import Event, parse_event
from operators.ingest.units import DAY_MS
from tests.support.cli import profilestream

PARAMS = HandbookParams(customers=400, terminals=800, days=60, seed=3)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(PARAMS)


def test_same_seed_same_transactions_other_seed_others(sim: Simulation) -> None:
    again = simulate(PARAMS)
    assert np.array_equal(sim.amount, again.amount) and np.array_equal(sim.fraud, again.fraud)
    other = simulate(HandbookParams(customers=400, terminals=800, days=60, seed=4))
    assert not np.array_equal(sim.amount[:100], other.amount[:100])


def test_transactions_fall_inside_the_days_in_time_order(sim: Simulation) -> None:
    assert (np.diff(sim.ts_ms) >= 0).all()
    assert sim.day.min() >= 0 and sim.day.max() < PARAMS.days
    assert (sim.amount >= 0).all()


def test_daily_volume_matches_the_customers_mean_rate(sim: Simulation) -> None:
    # Mean of uniform(0, 4) is 2 a day, less the noon-centred times drawn outside the day
    # (~3%) and customers with no terminal within reach.
    per_customer_day = len(sim.ts_ms) / (PARAMS.customers * PARAMS.days)
    assert 1.6 < per_customer_day < 2.05


def test_customers_use_only_terminals_within_the_radius() -> None:
    small = HandbookParams(customers=50, terminals=2_000, days=5, seed=1)
    sim = simulate(small)
    rng = np.random.default_rng(small.seed)
    c_xy = rng.uniform(0, 100, size=(small.customers, 2))  # the simulator's first draws
    rng.uniform(5, 100, size=small.customers)
    rng.uniform(0, 4, size=small.customers)
    t_xy = rng.uniform(0, 100, size=(small.terminals, 2))
    distance = np.hypot(*(t_xy[sim.terminal] - c_xy[sim.customer]).T)
    assert (distance < small.radius).all()


def test_every_amount_above_220_is_fraud(sim: Simulation) -> None:
    big = sim.amount > PARAMS.amount_fraud_above
    assert big.any()
    assert (sim.fraud[big] == 1).all()


def test_compromised_terminals_are_fraud_for_every_buyer_while_compromised(sim: Simulation) -> None:
    # Scenario 2: between a terminal's first and last such fraud, every sale is fraud,
    # whichever customer made it (some are relabelled scenario 1 or 3, still fraud).
    for terminal in np.unique(sim.terminal[sim.scenario == 2])[:20]:
        sales = sim.terminal == terminal
        days = sim.day[sales & (sim.scenario == 2)]
        window = sales & (sim.day >= days.min()) & (sim.day <= days.max())
        assert (sim.fraud[window] == 1).all()
        assert len(set(sim.customer[window].tolist())) >= 1


def test_compromised_customers_pay_five_times_their_usual(sim: Simulation) -> None:
    ratios = []
    for customer in np.unique(sim.customer[sim.scenario == 3]):
        mine = sim.customer == customer
        usual = np.median(sim.amount[mine & (sim.fraud == 0)])
        ratios.append(np.median(sim.amount[mine & (sim.scenario == 3)]) / usual)
    assert 3.5 < float(np.median(ratios)) < 6.5


def test_compromised_terminal_share_follows_the_daily_draws(sim: Simulation) -> None:
    # Once 28 days have passed, 2 x 28 of the 800 terminals (7%) are compromised at any time
    # (fewer where draws repeat), so about that share of sales is scenario-2 fraud.
    steady = sim.day >= PARAMS.terminal_days
    share = float(np.mean(sim.fraud[steady] & (sim.scenario[steady] != 3)))
    assert 0.04 < share < 0.10


def test_command_writes_valid_purchases_and_late_verdicts(tmp_path: Path) -> None:
    events, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    result = profilestream(
        "generate-handbook", "--customers", "200", "--terminals", "400", "--days", "20",
        "--delay-days", "7", "--out", str(events), "--labels", str(labels),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parsed = [parse_event(line) for line in events.read_bytes().splitlines()]
    assert all(isinstance(e, Event) and e.type == "purchase" and e.price for e in parsed)
    by_id = {e.event_id: e for e in parsed if isinstance(e, Event)}
    verdicts = [parse_event(line) for line in labels.read_bytes().splitlines()]
    assert verdicts and all(isinstance(v, Event) and v.type == "chargeback" for v in verdicts)
    for v in verdicts:
        assert isinstance(v, Event) and v.ref_event_id is not None
        purchase = by_id[v.ref_event_id]
        assert v.ts_ms - purchase.ts_ms == 7 * DAY_MS and v.ref_ts_ms == purchase.ts_ms
        assert (v.user_id, v.item_id) == (purchase.user_id, purchase.item_id)
    times = [v.ts_ms for v in verdicts if isinstance(v, Event)]
    assert times == sorted(times)
