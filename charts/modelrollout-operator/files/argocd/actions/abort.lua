-- Argo CD action "abort" for modelrollout.dev/ModelRollout: asks the operator to abort by
-- setting the command annotation to "abort:<unique id>" (the id makes a repeated command new).
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-" .. os.time() .. "-" .. (obj.metadata.resourceVersion or "0")
obj.metadata.annotations["modelrollout.dev/command"] = "abort:" .. id
obj.metadata.annotations["modelrollout.dev/command-by"] = "argocd"
return obj
