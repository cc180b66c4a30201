"""Every privacy and security promise, played by the party that would break it.

Each test runs an attack the way its attacker would, with the project's own code and
what that party can see: a curious coordinator (it sees every reply, chooses the
instructions, the sample and the SecAgg+ parameters), a hostile institution (it chooses
its own reply), a local user on a node's machine (it reads what file modes allow) and a
careless operator (two processes on one state directory, a restored backup). The threat
model these tests stand for is in docs/privacy.md ("Who can learn what").
"""

from __future__ import annotations
