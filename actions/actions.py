"""The starter persona's actions over a small JSON fixture (a stand-in for the billing,
order and network systems a real deployment would call)."""

from __future__ import annotations

import json
from abc import ABCMeta
from datetime import date, timedelta
from pathlib import Path

from rasa_sdk.events import ConversationPaused

from bot import action_kit as kit

DATA = json.loads((Path(__file__).parent / "kestrel.json").read_text(encoding="utf-8"))
TODAY = date(2026, 11, 26)


class AccountAction(kit.AccountAction, metaclass=ABCMeta):
    """A lookup on one of this package's accounts, once verified (bot.action_kit.AccountAction)."""

    accounts = DATA["accounts"]


class VerifyCustomer(kit.VerifyCustomer):
    accounts = DATA["accounts"]


class GetAccount(AccountAction):
    action_name, arguments = "get_account", ("account_id",)

    def account_lookup(self, args, account):
        return {k: account[k] for k in ("plan", "status", "balance", "next_bill_due")}, []


class GetBill(AccountAction):
    action_name, arguments = "get_bill", ("account_id", "month")

    def account_lookup(self, args, account):
        bills = DATA["bills"].get(args["account_id"], {})
        month = args["month"] or max(bills, default=None)
        bill = bills.get(month)
        return (dict(bill, month=month) if bill else {"error": f"no bill for {month}"}), []


class CheckOrder(kit.LookupAction):
    action_name, arguments = "check_order", ("order_id",)

    def lookup(self, args, tracker):
        order = DATA["orders"].get(str(args["order_id"]).upper())
        if not order:
            return {"error": "no such order", "order_id": args["order_id"]}, []
        return dict(order, order_id=args["order_id"]), []


class StartReturn(kit.LookupAction):
    action_name, arguments = "start_return", ("order_id", "reason")

    def lookup(self, args, tracker):
        order = DATA["orders"].get(str(args["order_id"]).upper())
        if not order or "delivered" not in order:
            return {"error": "order not delivered, nothing to return"}, []
        if date.fromisoformat(order["delivered"]) < TODAY - timedelta(days=30):
            return {"error": "more than 30 days since delivery", "delivered": order["delivered"]}, []
        send_by = (TODAY + timedelta(days=14)).isoformat()
        return {
            "return_id": "RT-" + str(abs(hash(args["order_id"])) % 900000 + 100000),
            "label_emailed": True,
            "send_by": send_by,
        }, []


class CheckOutage(kit.LookupAction):
    action_name, arguments = "check_outage", ("postcode",)

    def lookup(self, args, tracker):
        area = str(args["postcode"] or "").upper().split(" ")[0]
        return {"outages": DATA["outages"].get(area, [])}, []


class ListPlans(kit.Choices):
    action_name, arguments, listed_as = "list_plans", ("kind",), "plans"

    def choices(self, args):
        return DATA["plans"].get(args["kind"], [])

    def button(self, plan):
        return {
            "title": f"{plan['name']} (£{plan['monthly_price']:.0f})",
            "payload": f"I'd like the {plan['name']} plan",
        }


class ChangePlan(AccountAction):
    action_name, arguments = "change_plan", ("account_id", "plan_code")

    def account_lookup(self, args, account):
        plan = next((p for kind in DATA["plans"].values() for p in kind if p["code"] == args["plan_code"]), None)
        if plan is None:
            return {"error": f"no plan {args['plan_code']}"}, []
        result = {
            "changed": True,
            "plan_code": plan["code"],
            "plan_name": plan["name"],
            "monthly_price": plan["monthly_price"],
            "effective_from": account["next_bill_due"],
        }
        return result, []


class RoamingRates(kit.LookupAction):
    action_name, arguments = "roaming_rates", ("country",)

    def lookup(self, args, tracker):
        country = str(args["country"]).title()
        rates = DATA["roaming"].get(country)
        return (dict(rates, country=country) if rates else {"error": f"no roaming rates for '{args['country']}'"}), []


class SendEsim(AccountAction):
    action_name, arguments = "send_esim", ("account_id",)

    def account_lookup(self, args, account):
        return {
            "sent": True,
            "email": account["masked_email"],
            "qr_valid_until": (TODAY + timedelta(days=1)).isoformat(),
        }, []


class BlockSim(AccountAction):
    action_name, arguments = "block_sim", ("account_id",)

    def account_lookup(self, args, account):
        return {"blocked": True, "number_ending": account["number_ending"], "number_kept": True}, []


class BookEngineer(AccountAction):
    action_name, arguments = "book_engineer", ("account_id", "date")

    def account_lookup(self, args, account):
        if account.get("disputed"):
            # A disputed account needs a person: Rasa's ConversationPaused hands the conversation over.
            return {"booked": False, "reason": "account under review"}, [ConversationPaused()]
        return {
            "booked": True,
            "date": args["date"],
            "slot": "08:00-13:00",
            "reference": "ENG-" + args["account_id"][-6:],
        }, []
