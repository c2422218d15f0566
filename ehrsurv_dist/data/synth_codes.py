"""The synthetic generator's clinical vocabulary: disease patterns and their code tables.

Trajectories follow the seed's realistic generator (docs/data.md): 8 disease patterns with
diagnosis / treatment / monitoring codes, comorbidity add-ons and routine codes; the chronic /
acute split and the comorbid pairs of the hazard come from the seed generator too. The tables below turn the
patterns into numpy lookups that :mod:`ehrsurv_dist.data.synthetic` indexes with whole arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Disease:
    name: str
    dx: tuple[int, ...]
    tx: tuple[int, ...]
    mon: tuple[int, ...]
    prevalence: float
    ages: tuple[int, int]
    progression_visits: int
    chronic: bool


# the seed generator's disease patterns (docs/data.md), with its chronic/acute split
DISEASES: tuple[Disease, ...] = (
    Disease(
        "diabetes_type2",
        (250, 251, 252),
        (100, 101, 102, 103),
        (300, 301, 302),
        0.10,
        (40, 80),
        8,
        True,
    ),
    Disease("hypertension", (401, 402, 403), (110, 111, 112), (310, 311), 0.15, (35, 85), 6, True),
    Disease("asthma", (493, 494), (120, 121, 122), (320, 321), 0.08, (5, 70), 5, False),
    Disease("depression", (296, 311), (130, 131, 132), (330, 331), 0.12, (18, 75), 7, False),
    Disease("copd", (496, 491, 492), (140, 141, 142), (340, 341), 0.06, (50, 85), 6, True),
    Disease("heart_failure", (428, 429), (150, 151, 152), (350, 351), 0.05, (55, 90), 8, True),
    Disease("ckd", (585, 586), (160, 161), (360, 361), 0.07, (50, 85), 7, True),
    Disease("arthritis", (714, 715), (170, 171, 172), (370, 371), 0.09, (30, 75), 6, True),
)
DISEASE_INDEX = {d.name: i for i, d in enumerate(DISEASES)}
# (from, to, probability) comorbidity add-ons
COMORBID_ADDONS = (
    ("diabetes_type2", "hypertension", 0.4),
    ("diabetes_type2", "ckd", 0.3),
    ("hypertension", "heart_failure", 0.25),
    ("copd", "heart_failure", 0.2),
    ("depression", "diabetes_type2", 0.15),
)
# comorbid pairs of the hazard (x3) with their weights
COMORBID_PAIRS = (
    ("heart_failure", "ckd", 1.2),
    ("heart_failure", "copd", 1.1),
    ("diabetes_type2", "ckd", 1.0),
    ("diabetes_type2", "hypertension", 0.6),
)
ROUTINE = ((500, 0.30), (501, 0.20), (502, 0.15), (503, 0.10))

# Code kinds and their MEDS vocabularies
DX, TX, MON, ROUT = 0, 1, 2, 3
PREFIX = {DX: "ICD9CM", TX: "RX", MON: "LOINC", ROUT: "CPT"}
KIND_DESCRIPTION = {DX: "diagnosis", TX: "treatment", MON: "monitoring", ROUT: "routine"}


def _build_code_table() -> tuple[list[str], dict[tuple[int, int], int]]:
    """All code strings, and (kind, number) → index into that list."""
    names: list[str] = []
    index: dict[tuple[int, int], int] = {}

    def add(kind: int, num: int) -> None:
        if (kind, num) not in index:
            index[(kind, num)] = len(names)
            names.append(f"{PREFIX[kind]}/{num}")

    for d in DISEASES:
        for c in d.dx:
            add(DX, c)
        for c in d.tx:
            add(TX, c)
        for c in d.mon:
            add(MON, c)
    for c, _ in ROUTINE:
        add(ROUT, c)
    return names, index


def _disease_table(kind: int, codes_of: str) -> np.ndarray:
    """Per disease, the code-table indices of its codes of one kind, padded to width 4 with -1."""
    tab = np.full((N_DIS, 4), -1, np.int64)
    for i, d in enumerate(DISEASES):
        codes = getattr(d, codes_of)
        tab[i, : len(codes)] = [CODE_INDEX[(kind, c)] for c in codes]
    return tab


CODE_NAMES, CODE_INDEX = _build_code_table()
N_DIS = len(DISEASES)
DX_TAB = _disease_table(DX, "dx")  # [N_DIS, 4]
TX_TAB = _disease_table(TX, "tx")
MON_TAB = _disease_table(MON, "mon")
N_DX = np.array([len(d.dx) for d in DISEASES])
N_TX = np.array([len(d.tx) for d in DISEASES])
N_MON = np.array([len(d.mon) for d in DISEASES])
ROUT_IDX = np.array([CODE_INDEX[(ROUT, c)] for c, _ in ROUTINE])
ROUT_P = np.array([p for _, p in ROUTINE])
CODE_KIND = np.empty(len(CODE_NAMES), np.int64)  # kind of every code of CODE_NAMES
for (_kind, _num), _j in CODE_INDEX.items():
    CODE_KIND[_j] = _kind
CHRONIC = np.array([d.chronic for d in DISEASES])
SEX_CODES = ("GENDER/F", "GENDER/M")  # static codes after CODE_NAMES: sex 0, sex 1
