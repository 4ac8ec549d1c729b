"""The settings' outer surface: every flag of ``serve``, its environment variable, its
default, and what each one sets, as ``tus-gateway`` showed them before the settings were
grouped by part. Operators' scripts and deployments name these: the lists below are a
snapshot, and a change to them is a change for every operator, not a refactoring.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from gateway.config import GatewayConfig
from tests.conftest import ROOT

# (flag, metavar, environment variable, default as shown) of every setting, in help order.
SETTINGS = [('--host', 'HOST', 'TUS_HOST', '127.0.0.1'),
 ('--port', 'PORT', 'TUS_PORT', '1080'),
 ('--base-path', 'BASE_PATH', 'TUS_BASE_PATH', '/files/'),
 ('--data-dir', 'DATA_DIR', 'TUS_DATA_DIR', 'data'),
 ('--max-size', 'SIZE', 'TUS_MAX_SIZE', '0'),
 ('--expire-after', 'DURATION', 'TUS_EXPIRE_AFTER', '86400.0'),
 ('--sweep-interval', 'DURATION', 'TUS_SWEEP_INTERVAL', '60.0'),
 ('--tombstone-ttl', 'DURATION', 'TUS_TOMBSTONE_TTL', '604800.0'),
 ('--finished-ttl', 'DURATION', 'TUS_FINISHED_TTL', '604800.0'),
 ('--file-mode', 'FILE_MODE', 'TUS_FILE_MODE', '0600'),
 ('--cors-origins', 'CORS_ORIGINS', 'TUS_CORS_ORIGINS', '*'),
 ('--behind-proxy', 'BEHIND_PROXY', 'TUS_BEHIND_PROXY', 'off'),
 ('--fsync', 'FSYNC', 'TUS_FSYNC', 'ack'),
 ('--commit-interval', 'SIZE', 'TUS_COMMIT_INTERVAL', '8388608'),
 ('--stall-timeout', 'DURATION', 'TUS_STALL_TIMEOUT', '30.0'),
 ('--send-timeout', 'DURATION', 'TUS_SEND_TIMEOUT', '60.0'),
 ('--lock-wait', 'DURATION', 'TUS_LOCK_WAIT', '10.0'),
 ('--max-metadata', 'SIZE', 'TUS_MAX_METADATA', '4096'),
 ('--write-buffer', 'SIZE', 'TUS_WRITE_BUFFER', '262144'),
 ('--io-threads', 'IO_THREADS', 'TUS_IO_THREADS', '16'),
 ('--shutdown-timeout', 'DURATION', 'TUS_SHUTDOWN_TIMEOUT', '10.0'),
 ('--max-concat-parts', 'MAX_CONCAT_PARTS', 'TUS_MAX_CONCAT_PARTS', '1000'),
 ('--max-finals-per-partial', 'MAX_FINALS_PER_PARTIAL', 'TUS_MAX_FINALS_PER_PARTIAL', '4'),
 ('--max-open-uploads', 'MAX_OPEN_UPLOADS', 'TUS_MAX_OPEN_UPLOADS', '10000'),
 ('--max-open-uploads-per-client',
  'MAX_OPEN_UPLOADS_PER_CLIENT',
  'TUS_MAX_OPEN_UPLOADS_PER_CLIENT',
  '100'),
 ('--empty-patch-interval', 'DURATION', 'TUS_EMPTY_PATCH_INTERVAL', '1.0'),
 ('--memory-budget', 'SIZE', 'TUS_MEMORY_BUDGET', '0'),
 ('--memory-high-percent', 'MEMORY_HIGH_PERCENT', 'TUS_MEMORY_HIGH_PERCENT', '80.0'),
 ('--memory-critical-percent',
  'MEMORY_CRITICAL_PERCENT',
  'TUS_MEMORY_CRITICAL_PERCENT',
  '95.0'),
 ('--max-concurrent-uploads', 'MAX_CONCURRENT_UPLOADS', 'TUS_MAX_CONCURRENT_UPLOADS', '0'),
 ('--min-free-disk', 'MIN_FREE_DISK', 'TUS_MIN_FREE_DISK', '1%'),
 ('--upload-page', 'UPLOAD_PAGE', 'TUS_UPLOAD_PAGE', 'on'),
 ('--page-token-origins', 'PAGE_TOKEN_ORIGINS', 'TUS_PAGE_TOKEN_ORIGINS', ''),
 ('--extensions',
  'EXTENSIONS',
  'TUS_EXTENSIONS',
  'creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,concatenation,concatenation-unfinished'),
 ('--access-log', 'ACCESS_LOG', 'TUS_ACCESS_LOG', 'on'),
 ('--auth', 'AUTH', 'TUS_AUTH', 'none'),
 ('--auth-tokens', 'AUTH_TOKENS', 'TUS_AUTH_TOKENS', ''),
 ('--auth-admin-tokens', 'AUTH_ADMIN_TOKENS', 'TUS_AUTH_ADMIN_TOKENS', ''),
 ('--auth-secret', 'AUTH_SECRET', 'TUS_AUTH_SECRET', ''),
 ('--auth-url', 'AUTH_URL', 'TUS_AUTH_URL', ''),
 ('--auth-cache', 'DURATION', 'TUS_AUTH_CACHE', '10.0'),
 ('--auth-cache-entries', 'AUTH_CACHE_ENTRIES', 'TUS_AUTH_CACHE_ENTRIES', '10000'),
 ('--auth-timeout', 'DURATION', 'TUS_AUTH_TIMEOUT', '5.0'),
 ('--quota-size', 'SIZE', 'TUS_QUOTA_SIZE', '0'),
 ('--quota-uploads', 'QUOTA_UPLOADS', 'TUS_QUOTA_UPLOADS', '0'),
 ('--allowed-types', 'ALLOWED_TYPES', 'TUS_ALLOWED_TYPES', ''),
 ('--link-secret', 'LINK_SECRET', 'TUS_LINK_SECRET', ''),
 ('--link-ttl', 'DURATION', 'TUS_LINK_TTL', '3600.0'),
 ('--max-event-streams', 'MAX_EVENT_STREAMS', 'TUS_MAX_EVENT_STREAMS', '1000'),
 ('--log-level', 'LOG_LEVEL', 'TUS_LOG_LEVEL', 'info'),
 ('--log-format', 'LOG_FORMAT', 'TUS_LOG_FORMAT', 'json'),
 ('--redis-url', 'REDIS_URL', 'REDIS_URL', ''),
 ('--redis-prefix', 'REDIS_PREFIX', 'TUS_REDIS_PREFIX', 'tus'),
 ('--sink', 'SINK', 'TUS_SINK', 'directory'),
 ('--notion-token', 'NOTION_TOKEN', 'NOTION_TOKEN', ''),
 ('--notion-base-url', 'NOTION_BASE_URL', 'TUS_NOTION_BASE_URL', 'https://api.notion.com'),
 ('--notion-version', 'NOTION_VERSION', 'TUS_NOTION_VERSION', '2022-06-28'),
 ('--notion-user-database', 'NOTION_USER_DATABASE', 'TUS_NOTION_USER_DATABASE', ''),
 ('--notion-user-databases', 'NOTION_USER_DATABASES', 'TUS_NOTION_USER_DATABASES', ''),
 ('--notion-index-database', 'NOTION_INDEX_DATABASE', 'TUS_NOTION_INDEX_DATABASE', ''),
 ('--notion-window', 'SIZE', 'TUS_NOTION_WINDOW', '5242880'),
 ('--notion-concurrency', 'NOTION_CONCURRENCY', 'TUS_NOTION_CONCURRENCY', '4'),
 ('--notion-rate', 'NOTION_RATE', 'TUS_NOTION_RATE', '3.0'),
 ('--notion-retry-deadline', 'DURATION', 'TUS_NOTION_RETRY_DEADLINE', '300.0'),
 ('--notion-breaker-open', 'DURATION', 'TUS_NOTION_BREAKER_OPEN', '30.0'),
 ('--notion-retry-failed', 'DURATION', 'TUS_NOTION_RETRY_FAILED', '300.0'),
 ('--notion-scan', 'DURATION', 'TUS_NOTION_SCAN', '10.0'),
 ('--notion-properties', 'NOTION_PROPERTIES', 'TUS_NOTION_PROPERTIES', ''),
 ('--hook-pre-create', 'HOOK_PRE_CREATE', 'TUS_HOOK_PRE_CREATE', ''),
 ('--hook-post-finish', 'HOOK_POST_FINISH', 'TUS_HOOK_POST_FINISH', ''),
 ('--hook-timeout', 'DURATION', 'TUS_HOOK_TIMEOUT', '5.0'),
 ('--hook-retries', 'HOOK_RETRIES', 'TUS_HOOK_RETRIES', '2'),
 ('--hook-fallback', 'HOOK_FALLBACK', 'TUS_HOOK_FALLBACK', 'reject'),
 ('--hook-retry', 'DURATION', 'TUS_HOOK_RETRY', '30.0'),
 ('--sync-interval', 'SIZE', 'TUS_SYNC_INTERVAL', '33554432'),
 ('--lock-ttl', 'DURATION', 'TUS_LOCK_TTL', '5.0')]

# Every option ``serve --help`` mentions (the settings, their --no- forms, --help).
SERVE_FLAGS = ['--access-log',
 '--allowed-types',
 '--auth',
 '--auth-admin-tokens',
 '--auth-cache',
 '--auth-cache-entries',
 '--auth-secret',
 '--auth-timeout',
 '--auth-tokens',
 '--auth-url',
 '--base-path',
 '--behind-proxy',
 '--commit-interval',
 '--cors-origins',
 '--data-dir',
 '--empty-patch-interval',
 '--expire-after',
 '--extensions',
 '--file-mode',
 '--finished-ttl',
 '--fsync',
 '--help',
 '--hook-fallback',
 '--hook-post-finish',
 '--hook-pre-create',
 '--hook-retries',
 '--hook-retry',
 '--hook-timeout',
 '--host',
 '--io-threads',
 '--link-secret',
 '--link-ttl',
 '--lock-ttl',
 '--lock-wait',
 '--log-format',
 '--log-level',
 '--max-concat-parts',
 '--max-concurrent-uploads',
 '--max-event-streams',
 '--max-finals-per-partial',
 '--max-metadata',
 '--max-open-uploads',
 '--max-open-uploads-per-client',
 '--max-size',
 '--memory-budget',
 '--memory-critical-percent',
 '--memory-high-percent',
 '--min-free-disk',
 '--no-access-log',
 '--no-behind-proxy',
 '--no-upload-page',
 '--notion-base-url',
 '--notion-breaker-open',
 '--notion-concurrency',
 '--notion-index-database',
 '--notion-properties',
 '--notion-rate',
 '--notion-retry-deadline',
 '--notion-retry-failed',
 '--notion-scan',
 '--notion-token',
 '--notion-user-database',
 '--notion-user-databases',
 '--notion-version',
 '--notion-window',
 '--page-token-origins',
 '--port',
 '--quota-size',
 '--quota-uploads',
 '--redis-prefix',
 '--redis-url',
 '--send-timeout',
 '--shutdown-timeout',
 '--sink',
 '--stall-timeout',
 '--sweep-interval',
 '--sync-interval',
 '--tombstone-ttl',
 '--upload-page',
 '--write-buffer']

# ``tus-gateway config`` with no setting given.
DEFAULTS: dict[str, Any] = {'host': '127.0.0.1',
 'port': 1080,
 'base_path': '/files/',
 'data_dir': 'data',
 'max_size_bytes': 0,
 'expire_after_s': 86400.0,
 'sweep_interval_s': 60.0,
 'tombstone_ttl_s': 604800.0,
 'finished_ttl_s': 604800.0,
 'file_mode': '0600',
 'cors_origins': ['*'],
 'behind_proxy': False,
 'fsync': 'ack',
 'commit_interval_bytes': 8388608,
 'stall_timeout_s': 30.0,
 'send_timeout_s': 60.0,
 'lock_wait_s': 10.0,
 'max_metadata_bytes': 4096,
 'write_buffer_bytes': 262144,
 'io_threads': 16,
 'shutdown_timeout_s': 10.0,
 'max_concat_parts': 1000,
 'max_finals_per_partial': 4,
 'max_open_uploads': 10000,
 'max_open_uploads_per_client': 100,
 'empty_patch_interval_s': 1.0,
 'memory_budget_bytes': 0,
 'memory_high_percent': 80.0,
 'memory_critical_percent': 95.0,
 'max_concurrent_uploads': 0,
 'min_free_disk': '1%',
 'upload_page': True,
 'page_token_origins': [],
 'extensions': ['creation',
                'creation-with-upload',
                'creation-defer-length',
                'termination',
                'checksum',
                'expiration',
                'concatenation',
                'concatenation-unfinished'],
 'access_log': True,
 'auth': 'none',
 'auth_tokens': [],
 'auth_admin_tokens': [],
 'auth_secret': '',
 'auth_url': '',
 'auth_cache_s': 10.0,
 'auth_cache_entries': 10000,
 'auth_timeout_s': 5.0,
 'quota_bytes': 0,
 'quota_uploads': 0,
 'allowed_types': '',
 'link_secret': '',
 'link_ttl_s': 3600.0,
 'max_event_streams': 1000,
 'log_level': 'info',
 'log_format': 'json',
 'redis_url': '',
 'redis_prefix': 'tus',
 'sink': 'directory',
 'notion_token': '',
 'notion_base_url': 'https://api.notion.com',
 'notion_version': '2022-06-28',
 'notion_user_database': '',
 'notion_user_databases': [],
 'notion_index_database': '',
 'notion_window_bytes': 5242880,
 'notion_concurrency': 4,
 'notion_rate': 3.0,
 'notion_retry_deadline_s': 300.0,
 'notion_breaker_open_s': 30.0,
 'notion_retry_failed_s': 300.0,
 'notion_scan_s': 10.0,
 'notion_properties': [],
 'hook_pre_create': '',
 'hook_post_finish': '',
 'hook_timeout_s': 5.0,
 'hook_retries': 2,
 'hook_fallback': 'reject',
 'hook_retry_s': 30.0,
 'sync_interval_bytes': 33554432,
 'lock_ttl_s': 5.0}

# One value other than the default for every environment variable (together valid) ...
VALUES = {'TUS_HOST': '0.0.0.0',
 'TUS_PORT': '2080',
 'TUS_BASE_PATH': '/up/',
 'TUS_DATA_DIR': '/srv/tus',
 'TUS_MAX_SIZE': '5GiB',
 'TUS_EXPIRE_AFTER': '2h',
 'TUS_SWEEP_INTERVAL': '30s',
 'TUS_TOMBSTONE_TTL': '1d',
 'TUS_FINISHED_TTL': '2d',
 'TUS_FILE_MODE': '0640',
 'TUS_CORS_ORIGINS': 'https://a.example,https://b.example',
 'TUS_BEHIND_PROXY': 'on',
 'TUS_FSYNC': 'off',
 'TUS_COMMIT_INTERVAL': '16MiB',
 'TUS_STALL_TIMEOUT': '20s',
 'TUS_SEND_TIMEOUT': '90s',
 'TUS_LOCK_WAIT': '5s',
 'TUS_MAX_METADATA': '8KiB',
 'TUS_WRITE_BUFFER': '512KiB',
 'TUS_IO_THREADS': '8',
 'TUS_SHUTDOWN_TIMEOUT': '20s',
 'TUS_MAX_CONCAT_PARTS': '100',
 'TUS_MAX_FINALS_PER_PARTIAL': '2',
 'TUS_MAX_OPEN_UPLOADS': '500',
 'TUS_MAX_OPEN_UPLOADS_PER_CLIENT': '50',
 'TUS_EMPTY_PATCH_INTERVAL': '2s',
 'TUS_MEMORY_BUDGET': '1GiB',
 'TUS_MEMORY_HIGH_PERCENT': '70',
 'TUS_MEMORY_CRITICAL_PERCENT': '90',
 'TUS_MAX_CONCURRENT_UPLOADS': '64',
 'TUS_MIN_FREE_DISK': '2GiB',
 'TUS_UPLOAD_PAGE': 'off',
 'TUS_PAGE_TOKEN_ORIGINS': 'https://app.example',
 'TUS_EXTENSIONS': 'creation,termination',
 'TUS_ACCESS_LOG': 'off',
 'TUS_AUTH': 'hmac',
 'TUS_AUTH_TOKENS': 'tok-one-1234',
 'TUS_AUTH_ADMIN_TOKENS': 'admin-token-5678',
 'TUS_AUTH_SECRET': '9c1e4b7a2f5d8e3b6a0c9f2e5d8b1a4c7e0f3b6d',
 'TUS_AUTH_URL': 'http://auth.internal:8080/check',
 'TUS_AUTH_CACHE': '30s',
 'TUS_AUTH_CACHE_ENTRIES': '500',
 'TUS_AUTH_TIMEOUT': '2s',
 'TUS_QUOTA_SIZE': '10GiB',
 'TUS_QUOTA_UPLOADS': '20',
 'TUS_ALLOWED_TYPES': 'video/*=5GiB,image/*=50MiB,application/pdf',
 'TUS_LINK_SECRET': 'link-secret-0123456789abcdef0123456789',
 'TUS_LINK_TTL': '15m',
 'TUS_MAX_EVENT_STREAMS': '200',
 'TUS_LOG_LEVEL': 'debug',
 'TUS_LOG_FORMAT': 'text',
 'REDIS_URL': 'redis://worker:pw@cache:6379/1',
 'TUS_REDIS_PREFIX': 'gw',
 'TUS_SINK': 'notion',
 'NOTION_TOKEN': 'secret_abc',
 'TUS_NOTION_BASE_URL': 'http://127.0.0.1:9',
 'TUS_NOTION_VERSION': '2025-01-01',
 'TUS_NOTION_USER_DATABASE': 'db-user',
 'TUS_NOTION_USER_DATABASES': 'alice=0123456789abcdef0123456789abcdef,'
                              'bob=fedcba9876543210fedcba9876543210',
 'TUS_NOTION_INDEX_DATABASE': 'db-index',
 'TUS_NOTION_WINDOW': '10MiB',
 'TUS_NOTION_CONCURRENCY': '2',
 'TUS_NOTION_RATE': '2.5',
 'TUS_NOTION_RETRY_DEADLINE': '10m',
 'TUS_NOTION_BREAKER_OPEN': '1m',
 'TUS_NOTION_RETRY_FAILED': '0',
 'TUS_NOTION_SCAN': '5s',
 'TUS_NOTION_PROPERTIES': 'title=Titel,size=Größe',
 'TUS_HOOK_PRE_CREATE': 'https://policy.example/pre',
 'TUS_HOOK_POST_FINISH': 'http://hooks.example/post',
 'TUS_HOOK_TIMEOUT': '3s',
 'TUS_HOOK_RETRIES': '4',
 'TUS_HOOK_FALLBACK': 'accept',
 'TUS_HOOK_RETRY': '1m',
 'TUS_SYNC_INTERVAL': '64MiB',
 'TUS_LOCK_TTL': '7s'}
# ... and what ``tus-gateway config`` shows for them, set as variables or as flags.
SHOWN: dict[str, Any] = {'host': '0.0.0.0',
 'port': 2080,
 'base_path': '/up/',
 'data_dir': '/srv/tus',
 'max_size_bytes': 5368709120,
 'expire_after_s': 7200.0,
 'sweep_interval_s': 30.0,
 'tombstone_ttl_s': 86400.0,
 'finished_ttl_s': 172800.0,
 'file_mode': '0640',
 'cors_origins': ['https://a.example', 'https://b.example'],
 'behind_proxy': True,
 'fsync': 'off',
 'commit_interval_bytes': 16777216,
 'stall_timeout_s': 20.0,
 'send_timeout_s': 90.0,
 'lock_wait_s': 5.0,
 'max_metadata_bytes': 8192,
 'write_buffer_bytes': 524288,
 'io_threads': 8,
 'shutdown_timeout_s': 20.0,
 'max_concat_parts': 100,
 'max_finals_per_partial': 2,
 'max_open_uploads': 500,
 'max_open_uploads_per_client': 50,
 'empty_patch_interval_s': 2.0,
 'memory_budget_bytes': 1073741824,
 'memory_high_percent': 70.0,
 'memory_critical_percent': 90.0,
 'max_concurrent_uploads': 64,
 'min_free_disk': '2GiB',
 'upload_page': False,
 'page_token_origins': ['https://app.example'],
 'extensions': ['creation', 'termination'],
 'access_log': False,
 'auth': 'hmac',
 'auth_tokens': ['***'],
 'auth_admin_tokens': ['***'],
 'auth_secret': '***',
 'auth_url': 'http://auth.internal:8080/check',
 'auth_cache_s': 30.0,
 'auth_cache_entries': 500,
 'auth_timeout_s': 2.0,
 'quota_bytes': 10737418240,
 'quota_uploads': 20,
 'allowed_types': 'video/*=5GiB,image/*=50MiB,application/pdf',
 'link_secret': '***',
 'link_ttl_s': 900.0,
 'max_event_streams': 200,
 'log_level': 'debug',
 'log_format': 'text',
 'redis_url': 'redis://worker:***@cache:6379/1',
 'redis_prefix': 'gw',
 'sink': 'notion',
 'notion_token': '***',
 'notion_base_url': 'http://127.0.0.1:9',
 'notion_version': '2025-01-01',
 'notion_user_database': 'db-user',
 'notion_user_databases': ['alice=0123456789abcdef0123456789abcdef',
                           'bob=fedcba9876543210fedcba9876543210'],
 'notion_index_database': 'db-index',
 'notion_window_bytes': 10485760,
 'notion_concurrency': 2,
 'notion_rate': 2.5,
 'notion_retry_deadline_s': 600.0,
 'notion_breaker_open_s': 60.0,
 'notion_retry_failed_s': 0.0,
 'notion_scan_s': 5.0,
 'notion_properties': ['title=Titel', 'size=Größe'],
 'hook_pre_create': 'https://policy.example/pre',
 'hook_post_finish': 'http://hooks.example/post',
 'hook_timeout_s': 3.0,
 'hook_retries': 4,
 'hook_fallback': 'accept',
 'hook_retry_s': 60.0,
 'sync_interval_bytes': 67108864,
 'lock_ttl_s': 7.0}


# Invalid settings and what validation says of them, word for word and in order.
REFUSED: list[tuple[dict[str, str], str]] = [({'TUS_SINK': 'notion'},
  'invalid configuration: the notion sink needs notion_token; the notion sink needs '
  'notion_user_database; the notion sink needs notion_index_database'),
 ({'TUS_SINK': 's3'}, "invalid configuration: sink must be 'directory' or 'notion'"),
 ({'TUS_NOTION_WINDOW': '1MiB',
   'TUS_NOTION_RETRY_DEADLINE': '0',
   'TUS_NOTION_CONCURRENCY': '0',
   'TUS_NOTION_PROPERTIES': 'bad,titel=X,title='},
  'invalid configuration: notion_window_bytes must be between 5 and 20 MiB; '
  'notion_retry_deadline_s must be positive, notion_retry_failed_s not negative; '
  'notion_concurrency, notion_rate and notion_scan_s must be positive; notion_properties: '
  "'bad' is not role=Name with a role among title, size, hash, salt, created, file, "
  "index_title, index_database, index_page; notion_properties: 'titel=X' is not role=Name with "
  'a role among title, size, hash, salt, created, file, index_title, index_database, '
  "index_page; notion_properties: 'title=' is not role=Name with a role among title, size, "
  'hash, salt, created, file, index_title, index_database, index_page'),
 ({'TUS_AUTH': 'basic', 'TUS_AUTH_TOKENS': 'a b'},
  'invalid configuration: auth must be one of none, bearer, hmac, forward; auth_tokens must be '
  'non-empty and without whitespace'),
 ({'TUS_AUTH': 'bearer'}, 'invalid configuration: auth bearer needs auth_tokens'),
 ({'TUS_AUTH': 'hmac', 'TUS_AUTH_SECRET': 'x'},
  'invalid configuration: auth hmac needs an auth_secret of at least 32 characters'),
 ({'TUS_AUTH_SECRET': 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'},
  "invalid configuration: auth_tokens, auth_admin_tokens, auth_secret or auth_url is set but "
  "auth is 'none'; choose auth bearer, hmac or forward"),
 ({'TUS_AUTH': 'forward',
   'TUS_LINK_SECRET': 'short',
   'TUS_QUOTA_SIZE': '-1',
   'TUS_ALLOWED_TYPES': 'video/*=lots',
   'TUS_MAX_EVENT_STREAMS': '0',
   'TUS_AUTH_CACHE_ENTRIES': '0'},
  'invalid configuration: auth forward needs an http(s) auth_url; auth_cache_s must not be '
  'negative, auth_cache_entries and auth_timeout_s must be positive; link_secret must have at '
  'least 32 characters; quota_bytes must not be negative; link_ttl_s and max_event_streams '
  "must be positive; allowed_types: entry 1 (video/*): 'lots' is not a size (try 50MiB or "
  "5GiB)"),
 ({'TUS_HOOK_PRE_CREATE': 'ftp://x',
   'TUS_HOOK_POST_FINISH': 'nope',
   'TUS_HOOK_TIMEOUT': '0',
   'TUS_HOOK_RETRIES': '11',
   'TUS_HOOK_FALLBACK': 'maybe'},
  'invalid configuration: hook_pre_create must be an http:// or https:// URL; hook_post_finish '
  'must be an http:// or https:// URL; hook_timeout_s and hook_retry_s must be positive; '
  "hook_retries must be between 0 and 10; hook_fallback must be 'reject' or 'accept'"),
 ({'REDIS_URL': 'localhost:6379', 'TUS_LOCK_TTL': '0.5', 'TUS_REDIS_PREFIX': 'a{b}'},
  'invalid configuration: redis_url must start with redis://, rediss:// or unix://; lock_ttl_s '
  'must be at least 1 second; redis_prefix must be non-empty, without braces or spaces'),
 ({'TUS_SINK': 'notion',
   'TUS_NOTION_WINDOW': '30MiB',
   'TUS_LOG_LEVEL': 'loud',
   'TUS_AUTH': 'x',
   'REDIS_URL': 'x',
   'TUS_HOOK_RETRY': '0'},
  'invalid configuration: the notion sink needs notion_token; the notion sink needs '
  'notion_user_database; the notion sink needs notion_index_database; notion_window_bytes must '
  'be between 5 and 20 MiB; redis_url must start with redis://, rediss:// or unix://; auth '
  'must be one of none, bearer, hmac, forward; log_level must be one of debug, info, warning, '
  'error, critical; hook_timeout_s and hook_retry_s must be positive')]


def test_validation_messages_are_unchanged() -> None:
    for env, message in REFUSED:
        with pytest.raises(ValueError) as refused:
            GatewayConfig.from_env(env)
        assert str(refused.value) == message


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without any gateway setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TUS_") and k not in ("REDIS_URL", "NOTION_TOKEN")}
    return {**env, **extra}


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=clean_env(**(env or {})))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_setting_keeps_its_flag_variable_and_default() -> None:
    rows = re.findall(r"^  (--[a-z0-9-]+) (\S+)  \[(\S+), default (.*)\]$", cli("--help"),
                      re.MULTILINE)
    assert rows == SETTINGS


def test_serve_takes_the_same_flags() -> None:
    assert sorted(set(re.findall(r"(--[a-z][a-z0-9-]*)", cli("serve", "--help")))) == \
        SERVE_FLAGS


def test_defaults_are_unchanged() -> None:
    assert json.loads(cli("config")) == DEFAULTS


def test_every_variable_sets_its_setting() -> None:
    assert len(VALUES) == len(SETTINGS) and set(VALUES) == {env for _, _, env, _ in SETTINGS}
    shown = json.loads(cli("config", env=VALUES))
    assert shown == SHOWN
    # Each one changed something: none of them is ignored.
    assert all(shown[key] != DEFAULTS[key] for key in DEFAULTS)


def test_every_flag_sets_its_setting() -> None:
    switches = {flag for flag, _, _, default in SETTINGS if default in ("on", "off")}
    flags = [f"{flag}={VALUES[env]}" if flag not in switches
             else flag if VALUES[env] == "on" else flag.replace("--", "--no-", 1)
             for flag, _, env, _ in SETTINGS]
    assert json.loads(cli("config", *flags)) == SHOWN
