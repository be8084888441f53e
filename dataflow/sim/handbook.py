"""The Fraud Detection Handbook's transaction simulator, as purchase events.

Le Borgne et al., *Reproducible Machine Learning for Credit Card Fraud Detection -- Practical
Handbook* (Université Libre de Bruxelles, 2022), chapter 3.2, describes a simulator and
publishes baseline detectors measured on its data (chapter 3.4). It is a benchmark no one on
this project designed, so the learned risk score is checked on it. This module is written
from the chapter's description (no code copied):

- *customers* sit at a uniform random point of a 100 x 100 grid, spend a mean amount drawn
  uniformly from 5-100 (standard deviation half of it) and make a Poisson number of
  transactions a day whose mean is uniform in 0-4;
- *terminals* sit at uniform random points; a customer uses, uniformly, the terminals within
  ``radius`` of them (none: the customer makes no transactions);
- a transaction's second of the day is normal around noon (standard deviation 20,000 s),
  redrawn outside the day; its amount is normal (a negative draw becomes uniform in
  0-2 x mean), rounded to cents;
- three fraud scenarios mark transactions fraudulent: (1) every amount above 220;
  (2) each day two terminals are compromised, and all their transactions of the next 28 days
  are fraud; (3) each day three customers are compromised, and a third of their transactions
  of the next 14 days have their amount multiplied by 5 and are fraud.

A transaction becomes a ``purchase`` event: the customer is the user (``c<id>``), the
terminal the item (``t<id>``), the amount the price. :func:`handbook_labels` gives the fraud
verdicts, each with the time it becomes known (the transaction time plus a feedback delay).

>>> sim = simulate(HandbookParams(customers=50, terminals=100, days=10, seed=1))
>>> len(sim.amount) == len(sim.customer) == len(sim.fraud) > 0
True
>>> bool((sim.ts_ms[1:] >= sim.ts_ms[:-1]).all()), sorted(set(sim.scenario.tolist()) - {0, 1, 2, 3})
(True, [])
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import numpy as np

from dataflow.sim.writers import chargeback_line
from operators.ingest.units import DAY_MS

DAY_S = 86_400


@dataclass(frozen=True)
class HandbookParams:
    """The simulator's settings; the defaults are the chapter's (5,000 customers, 183 days)."""

    customers: int = 5_000
    terminals: int = 10_000
    days: int = 183
    start: dt.date = dt.date(2018, 4, 1)
    radius: float = 5.0
    seed: int = 0
    #: Scenario 1: amounts above this are fraud.
    amount_fraud_above: float = 220.0
    #: Scenario 2: terminals compromised per day, and for how many days.
    terminals_per_day: int = 2
    terminal_days: int = 28
    #: Scenario 3: customers compromised per day, for how many days, and the amount factor.
    customers_per_day: int = 3
    customer_days: int = 14
    amount_factor: float = 5.0

    @property
    def start_ms(self) -> int:
        return int(dt.datetime.combine(self.start, dt.time(), dt.UTC).timestamp()) * 1_000


@dataclass(frozen=True)
class Simulation:
    """The simulated transactions in time order, one array element each."""

    params: HandbookParams
    ts_ms: np.ndarray
    customer: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    fraud: np.ndarray
    scenario: np.ndarray

    @property
    def day(self) -> np.ndarray:
        """Days since the start, as the chapter's ``TX_TIME_DAYS``."""
        return (self.ts_ms - self.params.start_ms) // DAY_MS


def simulate(params: HandbookParams) -> Simulation:
    """Simulate the transactions and mark the three fraud scenarios."""
    rng = np.random.default_rng(params.seed)
    n_c, n_t, days = params.customers, params.terminals, params.days
    c_xy = rng.uniform(0, 100, size=(n_c, 2))
    mean_amount = rng.uniform(5, 100, size=n_c)
    std_amount = mean_amount / 2
    tx_per_day = rng.uniform(0, 4, size=n_c)
    t_xy = rng.uniform(0, 100, size=(n_t, 2))

    # Each customer's terminals within the radius, as one flat array with offsets.
    reachable = [
        np.flatnonzero(((t_xy - c_xy[c]) ** 2).sum(axis=1) < params.radius**2) for c in range(n_c)
    ]
    counts = np.array([len(r) for r in reachable])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = np.concatenate(reachable) if counts.sum() else np.zeros(0, dtype=np.int64)

    per_day = rng.poisson(np.repeat(tx_per_day[:, None], days, axis=1))  # (customers, days)
    per_day[counts == 0] = 0
    customer, day = np.nonzero(per_day)
    reps = per_day[customer, day]
    customer, day = np.repeat(customer, reps), np.repeat(day, reps)
    second = rng.normal(DAY_S / 2, 20_000, size=len(customer))
    inside = (second > 0) & (second < DAY_S)  # the chapter drops draws outside the day
    customer, day, second = customer[inside], day[inside], second[inside].astype(np.int64)
    amount = rng.normal(mean_amount[customer], std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean_amount[customer[negative]])
    amount = np.round(amount, 2)
    pick = (rng.random(len(customer)) * counts[customer]).astype(np.int64)
    terminal = flat[offsets[customer] + pick]
    ts_ms = params.start_ms + day * DAY_MS + second * 1_000

    order = np.lexsort((customer, ts_ms))
    ts_ms, customer, terminal, day = ts_ms[order], customer[order], terminal[order], day[order]
    amount = amount[order]
    fraud = np.zeros(len(ts_ms), dtype=np.int8)
    scenario = np.zeros(len(ts_ms), dtype=np.int8)

    big = amount > params.amount_fraud_above
    fraud[big], scenario[big] = 1, 1
    for d in range(days):
        hit = rng.choice(n_t, size=params.terminals_per_day, replace=False)
        at_hit = (day >= d) & (day < d + params.terminal_days) & np.isin(terminal, hit)
        fraud[at_hit], scenario[at_hit] = 1, 2
    for d in range(days):
        hit = rng.choice(n_c, size=params.customers_per_day, replace=False)
        within = (day >= d) & (day < d + params.customer_days)
        window = np.flatnonzero(within & np.isin(customer, hit))
        chosen = rng.choice(window, size=len(window) // 3, replace=False)
        amount[chosen] = np.round(amount[chosen] * params.amount_factor, 2)
        fraud[chosen], scenario[chosen] = 1, 3
    return Simulation(params, ts_ms, customer, terminal, amount, fraud, scenario)


def transaction_id(index: int) -> str:
    """The event id of the ``index``-th transaction (in time order)."""
    return f"tx{index}"


def handbook_events(sim: Simulation) -> Iterator[bytes]:
    """The transactions as purchase events, one JSON line each, in time order."""
    encoder = msgspec.json.Encoder()
    columns = (sim.ts_ms, sim.customer, sim.terminal, sim.amount)
    for i, (ts, c, t, a) in enumerate(zip(*(col.tolist() for col in columns), strict=True)):
        yield encoder.encode(
            {
                "event_id": transaction_id(i),
                "user_id": f"c{c}",
                "ts": ts,
                "type": "purchase",
                "item_id": f"t{t}",
                "price": a,
            }
        )


def handbook_labels(sim: Simulation, delay_days: float = 7.0) -> Iterator[bytes]:
    """The fraud verdicts as ``chargeback`` events, in the order they become known.

    A fraudulent transaction's chargeback arrives ``delay_days`` after it (``ts``), naming
    the purchase (``ref_event_id``, at ``ref_ts``) and its terminal (``item_id``); ``kind``
    (ignored by the flow) says which scenario made it. Genuine transactions get none, as a
    card issuer reports only disputes.
    """
    delay_ms = round(delay_days * DAY_MS)
    for i in np.flatnonzero(sim.fraud).tolist():
        bought = int(sim.ts_ms[i])
        yield chargeback_line(
            transaction_id(i),
            f"c{int(sim.customer[i])}",
            f"t{int(sim.terminal[i])}",
            bought,
            bought + delay_ms,
            kind=f"handbook_scenario_{int(sim.scenario[i])}",
        )
