"""What the example action packages share (rasa-sdk): an action that reads its declared
arguments from slots and answers with its result as a JSON message, and one that works on a
customer's account only once verify_customer has verified it in this conversation. A package's
own actions subclass these (`actions/` for Kestrel, `brands/lumen-energy/actions/` for Lumen)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher

NOT_VERIFIED = {"error": "account not verified in this conversation: call verify_customer first"}


class LookupAction(Action, metaclass=ABCMeta):
    """Reads the declared arguments from slots, runs `lookup`, returns its result as the
    action's custom payload plus any slots it sets. Abstract, so rasa-sdk doesn't register it."""

    action_name = ""
    arguments: tuple[str, ...] = ()

    def name(self) -> str:
        return self.action_name

    @abstractmethod
    def lookup(self, args: dict[str, Any], tracker: Tracker) -> tuple[dict, list]:
        """(the result for the model, rasa-sdk events)"""

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict) -> list:
        args = {name: tracker.get_slot(name) for name in self.arguments}
        result, events = self.lookup(args, tracker)
        dispatcher.utter_message(json_message=result)
        return events


class Choices(LookupAction, metaclass=ABCMeta):
    """Things the customer may pick from (plans, tariffs): the list goes to the model under
    `listed_as`, and one quick-reply button each to the widget."""

    listed_as = ""

    @abstractmethod
    def choices(self, args: dict[str, Any]) -> list[dict]:
        """The things on offer, for the action's arguments."""

    @abstractmethod
    def button(self, choice: dict) -> dict:
        """A choice's quick reply: {"title", "payload"}."""

    def lookup(self, args, tracker):
        return {self.listed_as: self.choices(args)}, []

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict) -> list:
        events = await super().run(dispatcher, tracker, domain)
        args = {name: tracker.get_slot(name) for name in self.arguments}
        dispatcher.utter_message(buttons=[self.button(c) for c in self.choices(args)])  # quick replies in the widget
        return events


class OnAccounts(LookupAction, metaclass=ABCMeta):
    """An action over the package's customer accounts, by account number."""

    @property
    @abstractmethod
    def accounts(self) -> dict[str, dict[str, Any]]:
        """The account records (a package sets it as a class attribute)."""


class VerifyCustomer(OnAccounts, metaclass=ABCMeta):
    """verify_customer: the account number and postcode (any case, any spacing) must match an
    account; the verified account goes in the `verified_account` slot."""

    action_name, arguments = "verify_customer", ("account_id", "postcode")

    def lookup(self, args, tracker):
        account = self.accounts.get(str(args["account_id"]))
        postcode = str(args["postcode"] or "").replace(" ", "").upper()
        if account and account["postcode"].replace(" ", "") == postcode:
            return {"verified": True, "first_name": account["first_name"]}, [
                SlotSet("verified_account", args["account_id"])
            ]
        return {"verified": False}, []


def verified(tracker: Tracker, account_id: str) -> bool:
    """Whether verify_customer verified this account in this conversation (its slot)."""
    return tracker.get_slot("verified_account") == account_id


class AccountAction(OnAccounts, metaclass=ABCMeta):
    """A lookup on one customer's account (the `account_id` argument): refused until
    verify_customer has verified that account in this conversation, then `account_lookup` runs
    with the account's record."""

    def lookup(self, args, tracker):
        if not verified(tracker, args["account_id"]):
            return NOT_VERIFIED, []
        return self.account_lookup(args, self.accounts[args["account_id"]])

    @abstractmethod
    def account_lookup(self, args: dict[str, Any], account: dict[str, Any]) -> tuple[dict, list]:
        """(the result for the model, rasa-sdk events), for a verified account"""
