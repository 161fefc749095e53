"""BEHAVIOR challenge task lists: task id <-> task name, as the evaluators number them.

2025: BEHAVIOR-1K ``OmniGibson/omnigibson/learning/utils/eval_utils.py`` ``TASK_NAMES_TO_INDICES``
(B10..B50, ids 0-49), copied here as data because the evaluator sends only the id.
2026: the evaluator reads ``<data>/2026-challenge-task-instances/metadata/B100_task_misc.csv``
(columns ``Task`` and ``Task ID``, 100 tasks); that file ships with the BEHAVIOR data, not
the code, so :func:`load_task_csv` reads it when a bridge is given its path.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

BEHAVIOR_2025_TASKS: tuple[str, ...] = (
    # B10
    "turning_on_radio", "picking_up_trash", "putting_away_Halloween_decorations", "cleaning_up_plates_and_food",
    "can_meat", "setting_mousetraps", "hiding_Easter_eggs", "picking_up_toys", "rearranging_kitchen_furniture",
    "putting_up_Christmas_decorations_inside",
    # B20
    "set_up_a_coffee_station_in_your_kitchen", "putting_dishes_away_after_cleaning", "preparing_lunch_box",
    "loading_the_car", "carrying_in_groceries", "bringing_in_wood", "moving_boxes_to_storage", "bringing_water",
    "tidying_bedroom", "outfit_a_basic_toolbox",
    # B30
    "sorting_vegetables", "collecting_childrens_toys", "putting_shoes_on_rack", "boxing_books_up_for_storage",
    "storing_food", "clearing_food_from_table_into_fridge", "assembling_gift_baskets", "sorting_household_items",
    "getting_organized_for_work", "clean_up_your_desk",
    # B40
    "setting_the_fire", "clean_boxing_gloves", "wash_a_baseball_cap", "wash_dog_toys", "hanging_pictures",
    "attach_a_camera_to_a_tripod", "clean_a_patio", "clean_a_trumpet", "spraying_for_bugs", "spraying_fruit_trees",
    # B50
    "make_microwave_popcorn", "cook_cabbage", "chop_an_onion", "slicing_vegetables", "chopping_wood",
    "cook_hot_dogs", "cook_bacon", "freeze_pies", "canning_food", "make_pizza",
)


def tasks_2025() -> dict[int, str]:
    return dict(enumerate(BEHAVIOR_2025_TASKS))


def load_task_csv(path: str | Path) -> dict[int, str]:
    """id -> name from the evaluator's task table: ``B100_task_misc.csv`` (``Task``, ``Task ID``) or a JSON
    object ``{"name": id}``."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        return {int(v): str(k) for k, v in data.items()}
    out: dict[int, str] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if "Task" not in row or "Task ID" not in row:
                raise ValueError(f"{path}: expected columns 'Task' and 'Task ID', got {list(row)}")
            out[int(row["Task ID"])] = row["Task"]
    return out
