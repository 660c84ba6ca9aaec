package.path = "/usr/lib/prosody/?.lua;" .. package.path
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
local dm = require "util.datamanager"
local st = require "util.stanza"
dm.set_data_path(arg[1])
-- What core.rostermanager keeps for alice@example.org after: adding bob (both, groups, name),
-- asking carol (ask=subscribe), a subscribe from dave with a status (pending in, stanza kept),
-- a subscribe from erin stored as `true` (older format), a pre-approval of frank.
local req = st.presence({ from = "dave@remote.example", to = "alice@example.org", type = "subscribe", id = "s1" })
	:text_tag("status", "Hi Alice, it's \"Dave\"\n— ok?")
local roster = {
	[false] = { version = 7, pending = { ["dave@remote.example"] = st.preserialize(req), ["erin@example.org"] = true } };
	["bob.smith@example.org"] = { subscription = "both", name = "Bob \"B\" Smith", groups = { ["Friends"] = true, ["Wörk"] = true } };
	["carol@plain.example"] = { subscription = "none", ask = "subscribe", groups = {} };
	["frank@remote.example"] = { subscription = "from", groups = { ["Family"] = true }, approved = "true" };
	["grace@remote.example"] = { subscription = "to", groups = {}, name = "Tab\tand \\ back\1" };
}
assert(dm.store("alice", "example.org", "roster", roster))
assert(dm.store("bob.smith", "example.org", "roster", {
	[false] = { version = 1, pending = {} };
	["alice@example.org"] = { subscription = "both", groups = {} };
}))
