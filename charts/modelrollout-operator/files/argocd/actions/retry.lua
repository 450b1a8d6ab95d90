-- Argo CD action "retry" for modelrollout.dev/ModelRollout: asks the operator to retry by
-- setting the command annotation to "retry:<unique id>" (the id makes a repeated command new).
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local id = "argocd-" .. os.time() .. "-" .. (obj.metadata.resourceVersion or "0")
obj.metadata.annotations["modelrollout.dev/command"] = "retry:" .. id
obj.metadata.annotations["modelrollout.dev/command-by"] = "argocd"
return obj
