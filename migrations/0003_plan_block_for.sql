-- tollgate schema, version 3: plans may block a consumer after abuse, like the file's plans.
-- block_for_seconds: seconds a consumer that exceeds the plan is refused for (null: no block). The
-- gateway checks the upper bound (366 days, the limiter's longest period) on write.
alter table plans add column block_for_seconds integer
    check (block_for_seconds is null or block_for_seconds > 0);
