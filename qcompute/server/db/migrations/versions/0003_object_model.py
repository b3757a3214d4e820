"""pools, jobs, dependencies, secrets, snapshots, timers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 19:53:18.980915
"""
from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pools',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('shortname', sa.String(length=512), nullable=False),
    sa.Column('profile', sa.String(length=128), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('previous_state', sa.String(length=32), nullable=True),
    sa.Column('state_transition_time', sa.DateTime(), nullable=False),
    sa.Column('previous_state_transition_time', sa.DateTime(), nullable=True),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.Column('close_requested', sa.Boolean(), nullable=False),
    sa.Column('slot_target', sa.Integer(), nullable=False),
    sa.Column('resized_at', sa.DateTime(), nullable=True),
    sa.Column('resources_version', sa.Integer(), nullable=False, server_default='0'),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('delete_after', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uuid')
    )
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pools_delete_after'), ['delete_after'], unique=False)
        batch_op.create_index(batch_op.f('ix_pools_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pools_state'), ['state'], unique=False)

    op.create_table('secrets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=1024), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('owner_id', 'key')
    )
    with op.batch_alter_table('secrets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_secrets_owner_id'), ['owner_id'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=512), nullable=False),
    sa.Column('shortname', sa.String(length=512), nullable=False),
    sa.Column('pool_id', sa.Integer(), nullable=True),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('use_dependencies', sa.Boolean(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('previous_state', sa.String(length=32), nullable=True),
    sa.Column('state_transition_time', sa.DateTime(), nullable=False),
    sa.Column('previous_state_transition_time', sa.DateTime(), nullable=True),
    sa.Column('errors', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('wall_deadline', sa.DateTime(), nullable=True),
    sa.Column('delete_after', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uuid')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_delete_after'), ['delete_after'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_pool_id'), ['pool_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_wall_deadline'), ['wall_deadline'], unique=False)

    op.create_table('pool_slots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pool_id', sa.Integer(), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('idle_since', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('pool_id', 'slot')
    )
    with op.batch_alter_table('pool_slots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pool_slots_pool_id'), ['pool_id'], unique=False)

    op.create_table('pool_output_cursors',
    sa.Column('pool_id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('stream', sa.String(length=8), nullable=False),
    sa.Column('offset', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pool_id', 'instance_id', 'stream')
    )
    op.create_table('pool_tags',
    sa.Column('pool_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=256), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pool_id', 'tag')
    )
    with op.batch_alter_table('pool_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pool_tags_tag'), ['tag'], unique=False)

    op.create_table('job_tags',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=256), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'tag')
    )
    with op.batch_alter_table('job_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_tags_tag'), ['tag'], unique=False)

    op.create_table('snapshots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('periodic', sa.Boolean(), nullable=False),
    sa.Column('interval_sec', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('pending', sa.Integer(), nullable=False),
    sa.Column('size_to_upload', sa.BigInteger(), nullable=False),
    sa.Column('transferred_size', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('trigger_date', sa.DateTime(), nullable=False),
    sa.Column('last_update_date', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uuid')
    )
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_snapshots_task_id'), ['task_id'], unique=False)

    op.create_table('task_dependencies',
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('parent_uuid', sa.String(length=36), nullable=False),
    sa.Column('conditions', sa.JSON(), nullable=False),
    sa.Column('actual_final_state', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'parent_uuid')
    )
    with op.batch_alter_table('task_dependencies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_dependencies_parent_uuid'), ['parent_uuid'], unique=False)

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('app_failures', sa.Integer(), nullable=False, server_default='0'))

    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pool_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('job_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('waiting_on', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('retries_used', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('resources_version', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('snapshot_interval_sec', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('snapshot_results', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('queue_deadline', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('delete_after', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('exported_token', sa.String(length=256), nullable=True))
        batch_op.create_index(batch_op.f('ix_tasks_delete_after'), ['delete_after'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_pool_id'), ['pool_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_queue_deadline'), ['queue_deadline'], unique=False)
        batch_op.create_foreign_key('fk_tasks_job_id', 'jobs', ['job_id'], ['id'], ondelete='CASCADE')
        batch_op.create_foreign_key('fk_tasks_pool_id', 'pools', ['pool_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_constraint('fk_tasks_job_id', type_='foreignkey')
        batch_op.drop_constraint('fk_tasks_pool_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_tasks_queue_deadline'))
        batch_op.drop_index(batch_op.f('ix_tasks_pool_id'))
        batch_op.drop_index(batch_op.f('ix_tasks_job_id'))
        batch_op.drop_index(batch_op.f('ix_tasks_delete_after'))
        batch_op.drop_column('exported_token')
        batch_op.drop_column('delete_after')
        batch_op.drop_column('queue_deadline')
        batch_op.drop_column('snapshot_results')
        batch_op.drop_column('snapshot_interval_sec')
        batch_op.drop_column('resources_version')
        batch_op.drop_column('retries_used')
        batch_op.drop_column('waiting_on')
        batch_op.drop_column('job_id')
        batch_op.drop_column('pool_id')

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('app_failures')

    with op.batch_alter_table('task_dependencies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_dependencies_parent_uuid'))

    op.drop_table('task_dependencies')
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_snapshots_task_id'))

    op.drop_table('snapshots')
    with op.batch_alter_table('job_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_tags_tag'))

    op.drop_table('job_tags')
    with op.batch_alter_table('pool_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pool_tags_tag'))

    op.drop_table('pool_tags')
    op.drop_table('pool_output_cursors')
    with op.batch_alter_table('pool_slots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pool_slots_pool_id'))

    op.drop_table('pool_slots')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_wall_deadline'))
        batch_op.drop_index(batch_op.f('ix_jobs_state'))
        batch_op.drop_index(batch_op.f('ix_jobs_pool_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_owner_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_delete_after'))

    op.drop_table('jobs')
    with op.batch_alter_table('secrets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_secrets_owner_id'))

    op.drop_table('secrets')
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pools_state'))
        batch_op.drop_index(batch_op.f('ix_pools_owner_id'))
        batch_op.drop_index(batch_op.f('ix_pools_delete_after'))

    op.drop_table('pools')
