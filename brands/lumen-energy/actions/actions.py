"""Lumen Energy's actions over a small JSON fixture (a stand-in for the billing, metering and
network systems a real energy supplier would call)."""

from __future__ import annotations

import json
import math
import re
from abc import ABCMeta
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rasa_sdk.events import ConversationPaused

from bot import action_kit as kit

DATA = json.loads((Path(__file__).parent / "lumen.json").read_text(encoding="utf-8"))
TODAY = date(2026, 11, 26)
REPORT_LINE = "105"  # the national power cut number, answered by the local network operator
MAX_PLAN_MONTHS = 18  # the longest payment plan agreed in chat: a lower offer goes to a person
INSTALL_NOTE = "Someone aged 18 or over must be home. The power and gas will be off for about 30 minutes each."
PSR_SERVICES = {
    "pensionable_age": ["advance notice of planned power cuts", "a password for anyone who calls at your home"],
    "disability": ["advance notice of planned power cuts", "a password for anyone who calls at your home"],
    "medical_equipment": ["advance notice of planned power cuts", "a direct contact number for power cuts"],
    "chronic_illness": ["advance notice of planned power cuts"],
    "young_children": ["advance notice of planned power cuts"],
    "sight_or_hearing": [
        "advance notice of planned power cuts",
        "a password for anyone who calls at your home",
        "contact by text instead of phone",
    ],
    "temporary": ["advance notice of planned power cuts"],
}


class AccountAction(kit.AccountAction, metaclass=ABCMeta):
    """A lookup on one of this package's accounts, once verified (bot.action_kit.AccountAction)."""

    accounts = DATA["accounts"]


def _outward(postcode: Any) -> str:
    """The first half of a postcode, with or without its space: "cf119lj" -> "CF11"."""
    code = re.sub(r"\s+", "", str(postcode or "")).upper()
    return code[:-3] if len(code) > 3 else code


def _network_operator(postcode: str) -> str:
    area = re.match(r"[A-Z]+", _outward(postcode))
    return DATA["network_operators"].get(area.group() if area else "", "your local network operator")


def _tariff(code: str) -> dict | None:
    return next((t for fuel in DATA["tariffs"].values() for t in fuel if t["code"] == code), None)


def _date(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def _reference(prefix: str, account_id: str) -> str:
    return f"{prefix}-{account_id[-6:]}"


class VerifyCustomer(kit.VerifyCustomer):
    accounts = DATA["accounts"]


class GetBalance(AccountAction):
    action_name, arguments = "get_balance", ("account_id",)

    def account_lookup(self, args, account):
        tariff = _tariff(account["tariff_code"]) or {}
        result = {
            "tariff": tariff.get("name", account["tariff_code"]),
            "tariff_code": account["tariff_code"],
            "balance": account["balance"],
            "balance_type": account["balance_type"],
            "monthly_direct_debit": account["monthly_direct_debit"],
            "meters": "smart" if account["smart"] else "standard",
            "latest_bill": account["latest_bill"],
        }
        if account.get("next_payment_date"):
            result["next_payment_date"] = account["next_payment_date"]
        if account.get("fixed_until"):
            result["fixed_until"] = account["fixed_until"]
            result["exit_fee_per_fuel"] = tariff.get("exit_fee_per_fuel", tariff.get("exit_fee", 0))
            result["fuels"] = sorted(account["meters"])
        if account.get("last_smart_reading"):
            result["last_smart_reading"] = account["last_smart_reading"]
        return result, []


class SubmitMeterReading(AccountAction):
    action_name, arguments = "submit_meter_reading", ("account_id", "meter", "reading")

    def account_lookup(self, args, account):
        meter = account["meters"].get(args["meter"])
        if meter is None:
            return {"accepted": False, "reason": f"no {args['meter']} meter on this account"}, []
        reading = str(args["reading"] or "")
        if not reading.isdigit():
            return {"accepted": False, "reason": "a reading is digits only"}, []
        previous = {"previous_reading": meter["last_reading"], "previous_read_on": meter["read_on"]}
        if int(reading) < int(meter["last_reading"]):
            return {"accepted": False, "reason": "lower than the previous reading", **previous}, []
        result = {
            "accepted": True,
            "meter": args["meter"],
            "reading": reading,
            **previous,
            "units_used": int(reading) - int(meter["last_reading"]),
        }
        if account["latest_bill"].get("estimated"):
            result.update(estimated_bill_replaced=True, new_bill_within_days=3)
        return result, []


class CheckPowerCut(kit.LookupAction):
    action_name, arguments = "check_power_cut", ("postcode",)

    def lookup(self, args, tracker):
        return {"power_cuts": DATA["power_cuts"].get(_outward(args["postcode"]), []), "report_line": REPORT_LINE}, []


class ListTariffs(kit.Choices):
    action_name, arguments, listed_as = "list_tariffs", ("fuel",), "tariffs"

    def choices(self, args):
        return DATA["tariffs"].get(args["fuel"], [])

    def button(self, tariff):
        return {"title": tariff["name"], "payload": f"I'd like the {tariff['name']} tariff"}


class ChangeTariff(AccountAction):
    action_name, arguments = "change_tariff", ("account_id", "tariff_code")

    def account_lookup(self, args, account):
        tariff = _tariff(args["tariff_code"])
        if tariff is None:
            return {"changed": False, "reason": f"no tariff {args['tariff_code']} on sale"}, []
        if tariff.get("needs_smart_meter") and not account["smart"]:
            return {"changed": False, "reason": "needs a smart meter", "smart_meter": False}, []
        if tariff["code"] == account["tariff_code"]:
            return {"changed": False, "reason": f"already on {tariff['name']}"}, []
        effective = TODAY + timedelta(days=6)
        result = {
            "changed": True,
            "tariff_code": tariff["code"],
            "tariff_name": tariff["name"],
            "effective_from": effective.isoformat(),
        }
        if tariff.get("months"):
            ends = date(effective.year + tariff["months"] // 12, effective.month, effective.day) - timedelta(days=1)
            result["fixed_until"] = ends.isoformat()
        result["cooling_off_days"] = 14
        return result, []


class BookSmartMeterInstall(AccountAction):
    action_name, arguments = "book_smart_meter_install", ("account_id", "date")

    def account_lookup(self, args, account):
        if account["smart"]:
            return {"booked": False, "reason": "smart meters already fitted"}, []
        day = _date(args["date"])
        if day is None:
            return {"booked": False, "reason": "date must be YYYY-MM-DD"}, []
        if day <= TODAY:
            nxt = TODAY + timedelta(days=2 if TODAY.weekday() == 5 else 1)
            return {"booked": False, "reason": "the earliest date is tomorrow", "next_available": nxt.isoformat()}, []
        if day.weekday() == 6:
            nxt = day + timedelta(days=1)
            return {"booked": False, "reason": "no installations on Sundays", "next_available": nxt.isoformat()}, []
        return {
            "booked": True,
            "date": day.isoformat(),
            "slot": "08:00-12:00" if day.day % 2 == 0 else "12:00-16:00",
            "reference": _reference("SM", args["account_id"]),
            "note": INSTALL_NOTE,
        }, []


class RegisterPriorityServices(AccountAction):
    action_name, arguments = "register_priority_services", ("account_id", "reason")

    def account_lookup(self, args, account):
        reason = args["reason"]
        result = {"registered": True, "reason": reason, "reference": _reference("PSR", args["account_id"])}
        if reason == "temporary":
            result["review_on"] = (TODAY + timedelta(days=61)).isoformat()
        result["shared_with_network_operator"] = _network_operator(account["postcode"])
        result["services"] = [*PSR_SERVICES.get(reason, []), "priority support in an emergency"]
        return result, []


class SetUpPaymentPlan(AccountAction):
    action_name, arguments = "set_up_payment_plan", ("account_id", "monthly_amount")

    def account_lookup(self, args, account):
        if account.get("under_review"):
            # An account under review needs a person: Rasa's ConversationPaused hands the conversation over.
            return {"set_up": False, "reason": "account under review"}, [ConversationPaused()]
        owed = account["balance"] if account["balance_type"] == "owed" else 0.0
        if owed <= 0:
            return {"set_up": False, "reason": "nothing owed"}, []
        amount = float(args["monthly_amount"] or 0)
        minimum = round(owed / MAX_PLAN_MONTHS, 2)
        if amount < minimum:
            return {
                "set_up": False,
                "reason": "below the lowest amount that can be agreed in chat",
                "owed": owed,
                "minimum_monthly_amount": minimum,
            }, []
        first = account.get("next_payment_date") or (TODAY + timedelta(days=14)).isoformat()
        return {
            "set_up": True,
            "owed": owed,
            "monthly_amount": amount,
            "months": math.ceil(round(owed / amount, 6)),
            "first_payment_date": first,
            "added_to_direct_debit": True,
        }, []


class MoveHome(AccountAction):
    action_name, arguments = "move_home", ("account_id", "move_out_date", "new_postcode")

    def account_lookup(self, args, account):
        day = _date(args["move_out_date"])
        if day is None:
            return {"recorded": False, "reason": "date must be YYYY-MM-DD"}, []
        if day < TODAY:
            return {"recorded": False, "reason": "a move-out date in the past needs a person to check it"}, []
        result = {
            "recorded": True,
            "move_out_date": day.isoformat(),
            "reference": _reference("MV", args["account_id"]),
            "final_bill_within_days": 14,
            "readings_needed_on": day.isoformat(),
        }
        if args.get("new_postcode"):
            result["new_home"] = {"postcode": str(args["new_postcode"]).upper(), "quote_emailed": True}
        return result, []
