-- Identifier lookup: GET {base}/Patient?identifier=system|value; targets are the
-- percent-encoded "system|value" lines.
dofile(os.getenv("PEER_DIR") .. "/common.lua")

function path_for(t)
  return prefix .. "/Patient?identifier=" .. t
end
