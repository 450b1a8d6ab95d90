-- Argo CD action discovery for modelrollout.dev/ModelRollout: which commands make sense now.
-- Mirrors the operator's own rules; it still validates every command and records each one
-- (accepted or ignored, with the reason) in the audit trail.
local actions = {}
local phase = ""
if obj.status ~= nil and obj.status.phase ~= nil then
  phase = obj.status.phase
end

local function is(...)
  for _, p in ipairs({...}) do
    if phase == p then
      return true
    end
  end
  return false
end

actions["pause"] = {["disabled"] = not is("Progressing", "Promoting"), ["iconClass"] = "fa fa-fw fa-pause-circle"}
actions["resume"] = {["disabled"] = not is("Paused"), ["iconClass"] = "fa fa-fw fa-play-circle"}
actions["promote"] = {["disabled"] = not is("Progressing", "Promoting", "Paused"), ["iconClass"] = "fa fa-fw fa-forward"}
actions["abort"] = {["disabled"] = not is("Progressing", "Promoting", "Paused"), ["iconClass"] = "fa fa-fw fa-undo"}
actions["retry"] = {["disabled"] = not is("RolledBack", "Failed"), ["iconClass"] = "fa fa-fw fa-redo-alt"}
return actions
