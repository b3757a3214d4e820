"""Pydantic wire models of the Qarnot dialect (camelCase on the wire)."""
from .tasks import AdvancedBucket, Constant, PageRequest, TaskSubmit, TaskUpdate, WaitRequest
from .secrets import Privileges, SecretsAccessRights
from .users import UserCreate

__all__ = ["AdvancedBucket", "Constant", "PageRequest", "TaskSubmit", "TaskUpdate", "UserCreate",
           "WaitRequest", "Privileges", "SecretsAccessRights"]
