-- Compartment search: GET {base}/Observation?patient=Patient/{id}&_count=50; targets are
-- Patient ids.
dofile(os.getenv("PEER_DIR") .. "/common.lua")

function path_for(t)
  return prefix .. "/Observation?patient=Patient/" .. t .. "&_count=50"
end
