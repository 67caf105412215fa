-- The revalidate load again (100 keys, max-age=0 upstream); bench/vs_nginx.sh gives ghgate
-- nginx's freshness for it (cache.rules: min_fresh 1s, stale_while_revalidate 1s).
dofile(os.getenv("BENCH_LUA") .. "/revalidate.lua")
