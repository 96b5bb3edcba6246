-- Read by id: GET {base}/{type}/{id}; targets are "Type/id" lines.
dofile(os.getenv("PEER_DIR") .. "/common.lua")

function path_for(t)
  return prefix .. "/" .. t
end
