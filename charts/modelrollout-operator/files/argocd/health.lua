-- Argo CD health check for modelrollout.dev/ModelRollout.
-- Healthy:     phase Succeeded, Ready=True, and the operator has seen the latest spec.
-- Progressing: Idle/Progressing/Promoting, or a spec the operator has not observed yet.
-- Suspended:   Paused (spec.paused or a pause command).
-- Degraded:    RolledBack or Failed, or Stalled=True (e.g. reason InvalidSpec).
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the rollout"
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local ready = condition(status.conditions, "Ready")
local stalled = condition(status.conditions, "Stalled")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled: " .. (stalled.reason or "unknown reason"))
  return hs
end
if (ready ~= nil and ready.reason == "InvalidSpec") then
  hs.status = "Degraded"
  hs.message = text(ready, "Invalid spec")
  return hs
end

if phase == "Succeeded" then
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = text(ready, "Model " .. (status.stableVersion or "") .. " is live")
  else
    hs.status = "Progressing"
    hs.message = text(ready, "Promoted; waiting for Ready")
  end
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = status.message or "Paused"
elseif phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = status.rollbackReason or status.message or phase
elseif phase == "Idle" or phase == "Progressing" or phase == "Promoting" then
  hs.status = "Progressing"
  hs.message = status.message or phase
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
if hs.message == "" then
  hs.message = phase
end
return hs
