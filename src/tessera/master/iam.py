"""Users, service accounts, groups and ACLs, as DC/OS's IAM keeps them, in the master's store.

Three kinds in the store: `iam_users` (uid -> user or service account: the argon2id hash of a
password, or an RSA public key), `iam_groups` (gid -> description and members) and `iam_acls`
(rid -> description and who holds which actions on it). A principal's effective grants are
its own plus its groups'; they are computed once per change and cached, so a request costs
a dict lookup. Every change is durable in the store before the call returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tessera.model.permissions import (
    Action,
    Grant,
    Principal,
    PrincipalKind,
    parse_actions,
    parse_rid,
)
from tessera.store import Delete, Put, StateStore

USERS, GROUPS, ACLS = "iam_users", "iam_groups", "iam_acls"
SUPERUSERS = "superusers"

UserType = Literal["user", "service"]


@dataclass(frozen=True)
class User:
    uid: str
    type: UserType
    description: str = ""
    password_hash: str | None = None
    public_key: str | None = None
    # Tokens issued before this instant are refused (password change, revoke-all).
    valid_after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "type": self.type,
            "description": self.description,
            "password_hash": self.password_hash,
            "public_key": self.public_key,
            "valid_after": self.valid_after,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> User:
        return User(
            data["uid"],
            data["type"],
            data.get("description", ""),
            data.get("password_hash"),
            data.get("public_key"),
            data.get("valid_after"),
        )

    def view(self) -> dict[str, Any]:
        """DC/OS's user object; never the hash."""
        body: dict[str, Any] = {
            "uid": self.uid,
            "url": f"/acs/api/v1/users/{self.uid}",
            "description": self.description,
            "is_remote": False,
            "is_service": self.type == "service",
            "provider_type": "internal",
            "provider_id": "",
        }
        if self.public_key is not None:
            body["public_key"] = self.public_key
        return body


@dataclass(frozen=True)
class Group:
    gid: str
    description: str = ""
    members: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {"gid": self.gid, "description": self.description, "members": sorted(self.members)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Group:
        return Group(data["gid"], data.get("description", ""), frozenset(data.get("members", ())))

    def view(self) -> dict[str, Any]:
        return {
            "gid": self.gid,
            "url": f"/acs/api/v1/groups/{self.gid}",
            "description": self.description,
            "provider_type": "internal",
        }


@dataclass(frozen=True)
class Acl:
    rid: str
    description: str = ""
    users: dict[str, frozenset[Action]] = field(default_factory=dict)
    groups: dict[str, frozenset[Action]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rid": self.rid,
            "description": self.description,
            "users": {uid: sorted(a) for uid, a in self.users.items()},
            "groups": {gid: sorted(a) for gid, a in self.groups.items()},
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Acl:
        return Acl(
            data["rid"],
            data.get("description", ""),
            {u: parse_actions(",".join(a)) for u, a in data.get("users", {}).items()},
            {g: parse_actions(",".join(a)) for g, a in data.get("groups", {}).items()},
        )


class IamConflict(Exception):
    """The object exists already (409)."""


class IamNotFound(Exception):
    """No such user, group, ACL or membership (404)."""


class Iam:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.users: dict[str, User] = {}
        self.groups: dict[str, Group] = {}
        self.acls: dict[str, Acl] = {}
        self._principals: dict[str, Principal] = {}

    async def load(self) -> None:
        self.users = {k: User.from_json(v) for k, v in (await self._store.load(USERS)).items()}
        self.groups = {k: Group.from_json(v) for k, v in (await self._store.load(GROUPS)).items()}
        self.acls = {k: Acl.from_json(v) for k, v in (await self._store.load(ACLS)).items()}
        self._changed()

    def _changed(self) -> None:
        self._principals.clear()

    # ---- reading --------------------------------------------------------------------------

    def groups_of(self, uid: str) -> list[str]:
        return sorted(g.gid for g in self.groups.values() if uid in g.members)

    def principal(self, uid: str) -> Principal | None:
        """The user's effective grants, or None for a uid that does not exist (any more)."""
        cached = self._principals.get(uid)
        if cached is not None:
            return cached
        user = self.users.get(uid)
        if user is None:
            return None
        memberships = set(self.groups_of(uid))
        own: list[Grant] = []
        by_group: dict[str, list[Grant]] = {gid: [] for gid in memberships}
        for acl in self.acls.values():
            rid = parse_rid(acl.rid)
            if uid in acl.users:
                own.append(Grant(rid, acl.users[uid]))
            for gid, actions in acl.groups.items():
                if gid in memberships:
                    by_group[gid].append(Grant(rid, actions))
        kind = PrincipalKind.SERVICE if user.type == "service" else PrincipalKind.USER
        principal = Principal.build(uid, kind, own, by_group)
        self._principals[uid] = principal
        return principal

    def permissions_of(self, uid: str) -> dict[str, Any]:
        """DC/OS's `/users/{uid}/permissions`: direct and through groups."""
        direct, through = [], []
        memberships = set(self.groups_of(uid))
        for acl in sorted(self.acls.values(), key=lambda a: a.rid):
            if uid in acl.users:
                direct.append(
                    {
                        "rid": acl.rid,
                        "description": acl.description,
                        "actions": [{"name": a} for a in sorted(acl.users[uid])],
                    }
                )
            for gid, actions in sorted(acl.groups.items()):
                if gid in memberships:
                    through.append(
                        {
                            "rid": acl.rid,
                            "description": acl.description,
                            "actions": [{"name": a} for a in sorted(actions)],
                            "gid": gid,
                        }
                    )
        return {"direct": direct, "groups": through}

    # ---- changing -------------------------------------------------------------------------

    async def put_user(self, user: User, create: bool) -> None:
        if create and user.uid in self.users:
            raise IamConflict(f"user {user.uid} already exists")
        if not create and user.uid not in self.users:
            raise IamNotFound(f"user {user.uid} not found")
        await self._store.commit([Put(USERS, user.uid, user.to_json())])
        self.users[user.uid] = user
        self._changed()

    async def delete_user(self, uid: str) -> None:
        if uid not in self.users:
            raise IamNotFound(f"user {uid} not found")
        operations: list[Put | Delete] = [Delete(USERS, uid)]
        groups = {g.gid: replace(g, members=g.members - {uid}) for g in self._groups_with(uid)}
        acls = {
            a.rid: replace(a, users={u: x for u, x in a.users.items() if u != uid})
            for a in self.acls.values()
            if uid in a.users
        }
        operations += [Put(GROUPS, gid, g.to_json()) for gid, g in groups.items()]
        operations += [Put(ACLS, rid, a.to_json()) for rid, a in acls.items()]
        await self._store.commit(operations)
        del self.users[uid]
        self.groups.update(groups)
        self.acls.update(acls)
        self._changed()

    def _groups_with(self, uid: str) -> Iterable[Group]:
        return [g for g in self.groups.values() if uid in g.members]

    async def put_group(self, group: Group, create: bool) -> None:
        if create and group.gid in self.groups:
            raise IamConflict(f"group {group.gid} already exists")
        if not create and group.gid not in self.groups:
            raise IamNotFound(f"group {group.gid} not found")
        await self._store.commit([Put(GROUPS, group.gid, group.to_json())])
        self.groups[group.gid] = group
        self._changed()

    async def delete_group(self, gid: str) -> None:
        if gid not in self.groups:
            raise IamNotFound(f"group {gid} not found")
        acls = {
            a.rid: replace(a, groups={g: x for g, x in a.groups.items() if g != gid})
            for a in self.acls.values()
            if gid in a.groups
        }
        await self._store.commit(
            [Delete(GROUPS, gid), *(Put(ACLS, rid, a.to_json()) for rid, a in acls.items())]
        )
        del self.groups[gid]
        self.acls.update(acls)
        self._changed()

    async def set_member(self, gid: str, uid: str, member: bool) -> None:
        group = self.groups.get(gid)
        if group is None:
            raise IamNotFound(f"group {gid} not found")
        if uid not in self.users:
            raise IamNotFound(f"user {uid} not found")
        if member == (uid in group.members):
            if member:
                raise IamConflict(f"user {uid} is already a member of {gid}")
            raise IamNotFound(f"user {uid} is not a member of {gid}")
        members = group.members | {uid} if member else group.members - {uid}
        await self.put_group(replace(group, members=members), create=False)

    async def put_acl(self, acl: Acl, create: bool) -> None:
        if create and acl.rid in self.acls:
            raise IamConflict(f"ACL for {acl.rid} already exists")
        if not create and acl.rid not in self.acls:
            raise IamNotFound(f"ACL for {acl.rid} not found")
        await self._store.commit([Put(ACLS, acl.rid, acl.to_json())])
        self.acls[acl.rid] = acl
        self._changed()

    async def delete_acl(self, rid: str) -> None:
        if rid not in self.acls:
            raise IamNotFound(f"ACL for {rid} not found")
        await self._store.commit([Delete(ACLS, rid)])
        del self.acls[rid]
        self._changed()

    async def set_action(
        self, rid: str, holder: Literal["users", "groups"], name: str, action: Action, on: bool
    ) -> None:
        """Grant or revoke one action of an ACL to a user or group (DC/OS's per-action PUT)."""
        acl = self.acls.get(rid)
        if acl is None and on:
            acl = Acl(rid)  # granting on a rid nobody holds yet creates its ACL
            await self.put_acl(acl, create=True)
        if acl is None:
            raise IamNotFound(f"ACL for {rid} not found")
        known = self.users if holder == "users" else self.groups
        if name not in known:
            raise IamNotFound(f"{holder[:-1]} {name} not found")
        table = dict(getattr(acl, holder))
        held = table.get(name, frozenset())
        changed = held | {action} if on else held - {action}
        if not on and action not in held:
            raise IamNotFound(f"{name} does not hold {action} on {rid}")
        if changed:
            table[name] = changed
        else:
            table.pop(name, None)
        acl = replace(acl, users=table) if holder == "users" else replace(acl, groups=table)
        await self.put_acl(acl, create=False)
