"""Conformance suites: what every implementation of a contract must do.

The storage suite lives in ``_conformance_storage`` (split off when it grew past ~500 lines)
and is re-exported here, so ``from meshxmpp.testing._conformance import check_storage`` keeps
working. See that module for how to run it against a backend.
"""

from __future__ import annotations

from meshxmpp.testing._conformance_storage import (
    STORAGE_CHECKS,
    MakeStorage,
    check_account_delete_cascades,
    check_accounts_crud,
    check_concurrent_writes,
    check_credentials_round_trip,
    check_offline_concurrent_delivery,
    check_offline_delete_by_ids,
    check_offline_delivery_records_follow_messages,
    check_offline_expire,
    check_offline_known_resources,
    check_offline_mark_delivered_rules,
    check_offline_order,
    check_offline_pending_and_mark_delivered,
    check_offline_quota,
    check_rooms_concurrent,
    check_rooms_crud,
    check_rooms_occupant_mirror,
    check_rooms_round_trip,
    check_roster_groups,
    check_roster_hidden,
    check_roster_items,
    check_roster_upsert,
    check_storage,
    check_user_isolation,
)

__all__ = [
    "STORAGE_CHECKS",
    "MakeStorage",
    "check_account_delete_cascades",
    "check_accounts_crud",
    "check_concurrent_writes",
    "check_credentials_round_trip",
    "check_offline_concurrent_delivery",
    "check_offline_delete_by_ids",
    "check_offline_delivery_records_follow_messages",
    "check_offline_expire",
    "check_offline_known_resources",
    "check_offline_mark_delivered_rules",
    "check_offline_order",
    "check_offline_pending_and_mark_delivered",
    "check_offline_quota",
    "check_rooms_concurrent",
    "check_rooms_crud",
    "check_rooms_occupant_mirror",
    "check_rooms_round_trip",
    "check_roster_groups",
    "check_roster_hidden",
    "check_roster_items",
    "check_roster_upsert",
    "check_storage",
    "check_user_isolation",
]
