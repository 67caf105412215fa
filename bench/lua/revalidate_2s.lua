-- The revalidate load again (100 keys, max-age=0 upstream); bench/vs_nginx.sh gives ghgate
-- the freshness nginx's `proxy_cache_valid 1s` ends up with (cache.rules: min_fresh 2s,
-- stale_while_revalidate 1s).
dofile(os.getenv("BENCH_LUA") .. "/revalidate.lua")
