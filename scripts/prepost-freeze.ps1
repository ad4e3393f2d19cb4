<#
.SYNOPSIS
    Freeze a Windows application for its backup, and thaw it: stop named services (or run
    an application hook) before the snapshot, start them again after. Guarded: nothing
    stays stopped past -MaxSeconds, even if the thaw never comes.

.DESCRIPTION
    The Windows pre- and post-script of prepost-backup (README, "Script kit"):
      pre:  prepost-freeze.ps1 -Action Freeze -Services W3SVC,MyAppService -MaxSeconds 600
      post: prepost-freeze.ps1 -Action Thaw

    Meant to be used with AWS Backup's Windows VSS option ("BackupOptions":
    {"WindowsVSS": "enabled"} in the run input's BackupDetails): VSS makes the snapshot
    application-consistent for the applications that have a VSS writer (SQL Server,
    Exchange, ...); stopping a service covers the applications that have none.

    Freeze  starts a guard first: a one-shot scheduled task (\prepost-backup\
            prepost-freeze-guard, run as SYSTEM by the Task Scheduler, not by the SSM agent,
            so it outlives the command) that thaws after -MaxSeconds if no Thaw came. Then it
            runs -FreezeHook, if given, and stops each service of -Services that is running,
            its running dependent services first, recording each one before it stops it.
            A Freeze that fails half-way starts again what it stopped, runs -ThawHook, and
            exits 1. A Freeze while frozen changes nothing and succeeds.
    Thaw    starts what Freeze stopped (in reverse order), runs the -ThawHook that Freeze
            recorded, and removes the guard; with nothing frozen, it says so and succeeds.
            It takes no other parameter: it undoes what Freeze recorded.
    Status  says what is frozen now.

    Exit codes: 0 done, 1 failed (the reason on stderr), 2 bad arguments.
    State: $env:ProgramData\prepost-freeze (SYSTEM and Administrators only; a folder owned
    by anyone else is refused). Hooks: $env:ProgramFiles\prepost-freeze\hooks.

.PARAMETER Action
    Freeze, Thaw or Status.

.PARAMETER Services
    Service names (not display names), separated by commas: 'W3SVC,MyAppService'. A
    service that is not running is left as it is, and not started by Thaw.
    AmazonSSMAgent (it delivers the thaw) and Schedule (it runs the guard) are refused.

.PARAMETER FreezeHook
    A program an administrator installed in $env:ProgramFiles\prepost-freeze\hooks (.ps1,
    .cmd, .bat or .exe), named by its file name or its full path; run with no arguments
    before the services stop. A non-zero exit fails the Freeze. Only that folder: a start
    event must not be able to run any other program on the instance.

.PARAMETER ThawHook
    The same, run by Thaw after the services start again (and by a Freeze that failed).
    Given to Freeze, which records it for Thaw and for the guard. Should be idempotent.

.PARAMETER MaxSeconds
    After this many seconds the guard thaws, if no Thaw came: 1 to 86400, default 300 (as
    prepost-backup's MaxFreezeSeconds). Give at least MaxFreezeSeconds plus the time from
    the freeze to the backup's start (README, "Script kit").

.PARAMETER TimeoutSeconds
    How long one service may take to stop or to start: 1 to 3600, default 120.

.PARAMETER Help
    Print this help.

.EXAMPLE
    .\prepost-freeze.ps1 -Action Freeze -Services W3SVC,MyAppService -MaxSeconds 600

.EXAMPLE
    .\prepost-freeze.ps1 -Action Freeze -FreezeHook quiesce.ps1 -ThawHook resume.ps1

.EXAMPLE
    .\prepost-freeze.ps1 -Action Thaw
#>
param(
    [string]$Action = '',
    [string]$Services = '',
    [string]$FreezeHook = '',
    [string]$ThawHook = '',
    [string]$MaxSeconds = '300',
    [string]$TimeoutSeconds = '120',
    [switch]$Help,
    [switch]$ByGuard  # internal: the guard's own thaw
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

# Without an explicit `exit N`, a PowerShell script reports the exit code of the last native
# command it ran, whatever happened: every path ends in the one at the bottom. Nothing
# before its `try` can fail (literals and function definitions only), and every parameter
# is a string or a switch, so that binding them cannot fail either.
$MaxMaxSeconds = 86400
$StateDir = "$env:ProgramData\prepost-freeze"
$HookDir = "$env:ProgramFiles\prepost-freeze\hooks"
$GuardPath = '\prepost-backup\'
$GuardName = 'prepost-freeze-guard'
$LockName = 'Global\prepost-freeze'
# Stopping these would cut the way back: the SSM agent delivers the thaw, the Task
# Scheduler runs the guard.
$Protected = @('AmazonSSMAgent', 'Schedule')
$HookTypes = @('.ps1', '.cmd', '.bat', '.exe')
$script:GuardLog = $null

function Write-Line([string]$Message) {
    $line = "prepost-freeze: $Message"
    [Console]::Out.WriteLine($line)
    if ($script:GuardLog) { Add-Content -LiteralPath $script:GuardLog -Value "$(Get-Date -Format o) $line" }
}

function Write-Problem([string]$Message) {
    $line = "prepost-freeze: error: $Message"
    [Console]::Error.WriteLine($line)
    if ($script:GuardLog) { Add-Content -LiteralPath $script:GuardLog -Value "$(Get-Date -Format o) $line" }
}

# A bad argument: exit code 2, nothing done. Marked in its Data, so that no other error
# (an ArgumentException from .NET, say) is taken for one.
$UsageMark = 'prepost-freeze-usage'
function New-UsageError([string]$Message) {
    $exception = New-Object System.Exception "$Message (see Get-Help .\prepost-freeze.ps1)"
    $exception.Data[$UsageMark] = $true
    return $exception
}

function Get-StatePath([string]$Name) { return Join-Path $StateDir $Name }

function Read-Lines([string]$Name) {
    $path = Get-StatePath $Name
    if (-not (Test-Path -LiteralPath $path)) { return @() }
    return @(Get-Content -LiteralPath $path | Where-Object { $_ -ne '' })
}

function ConvertTo-Seconds([string]$Text, [string]$Name, [int]$Most) {
    if ($Text -notmatch '^[0-9]{1,5}$' -or [int]$Text -lt 1 -or [int]$Text -gt $Most) {
        throw (New-UsageError "-$Name takes 1 to $Most, not '$Text'")
    }
    return [int]$Text
}

# -- state: SYSTEM and Administrators only, one action at a time ------------------------

function Initialize-StateDir {
    $trusted = @('S-1-5-18', 'S-1-5-32-544')  # LocalSystem, Administrators
    if (-not (Test-Path -LiteralPath $StateDir)) {
        $acl = New-Object System.Security.AccessControl.DirectorySecurity
        $acl.SetAccessRuleProtection($true, $false)
        foreach ($sid in $trusted) {
            $identity = New-Object System.Security.Principal.SecurityIdentifier $sid
            $rule = New-Object System.Security.AccessControl.FileSystemAccessRule(
                $identity, 'FullControl', 'ContainerInherit,ObjectInherit', 'None', 'Allow')
            $acl.AddAccessRule($rule)
        }
        # Created with its ACL, not given one after: no moment when others may write in it.
        [System.IO.Directory]::CreateDirectory($StateDir, $acl) | Out-Null
    }
    # Anyone may create folders in ProgramData: one made by someone else could feed Thaw
    # the services to start, and the guard the script it runs as SYSTEM.
    $owner = (Get-Acl -LiteralPath $StateDir).GetOwner([System.Security.Principal.SecurityIdentifier]).Value
    if ($trusted -notcontains $owner) {
        throw "$StateDir is owned by $owner, not by SYSTEM or Administrators: remove it and run again"
    }
}

function Enter-Lock {
    $mutex = New-Object System.Threading.Mutex($false, $LockName)
    try {
        if (-not $mutex.WaitOne([TimeSpan]::FromSeconds(120))) {
            throw 'another prepost-freeze has held the lock for 120 s'
        }
    }
    catch [System.Threading.AbandonedMutexException] {
        # Its holder died: the lock is ours now, and the state files say what it left.
    }
    return $mutex
}

function Test-Frozen { return (Test-Path -LiteralPath (Get-StatePath 'since.txt')) }

# -- the guard: a one-shot scheduled task ------------------------------------------------

function Start-Guard([int]$Seconds) {
    # The guard runs a copy in the state folder: SSM may clean up the downloaded script,
    # and only SYSTEM and Administrators can change the copy.
    $copy = Get-StatePath 'prepost-freeze.ps1'
    if ($PSCommandPath -ne $copy) { Copy-Item -LiteralPath $PSCommandPath -Destination $copy -Force }
    $at = (Get-Date).AddSeconds($Seconds)
    $powershell = Join-Path $PSHOME 'powershell.exe'
    $arguments = "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$copy`" -Action Thaw -ByGuard"
    $task = New-ScheduledTaskAction -Execute $powershell -Argument $arguments
    $trigger = New-ScheduledTaskTrigger -Once -At $at
    $settings = New-ScheduledTaskSettingsSet -StartWhenAvailable -AllowStartIfOnBatteries `
        -DontStopIfGoingOnBatteries -MultipleInstances IgnoreNew -ExecutionTimeLimit (New-TimeSpan -Hours 1)
    $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    Register-ScheduledTask -TaskPath $GuardPath -TaskName $GuardName -Action $task -Trigger $trigger `
        -Settings $settings -Principal $principal -Force | Out-Null
    Set-Content -LiteralPath (Get-StatePath 'guard-at.txt') -Value $at.ToString('o')
}

function Get-Guard {
    return Get-ScheduledTask -TaskPath $GuardPath -TaskName $GuardName -ErrorAction SilentlyContinue
}

function Stop-Guard {
    if (Get-Guard) { Unregister-ScheduledTask -TaskPath $GuardPath -TaskName $GuardName -Confirm:$false }
    Remove-Item -LiteralPath (Get-StatePath 'guard-at.txt') -Force -ErrorAction SilentlyContinue
}

# -- services and hooks -----------------------------------------------------------------

function Resolve-Hook([string]$Hook, [string]$Name) {
    if ($Hook -eq '') { return '' }
    $candidate = $Hook
    if (-not [System.IO.Path]::IsPathRooted($Hook)) { $candidate = Join-Path $HookDir $Hook }
    $full = [System.IO.Path]::GetFullPath($candidate)
    if (-not $full.StartsWith($HookDir.TrimEnd('\') + '\', [System.StringComparison]::OrdinalIgnoreCase)) {
        throw (New-UsageError "-$Name runs only programs in $HookDir, not $full")
    }
    if ($HookTypes -notcontains [System.IO.Path]::GetExtension($full).ToLowerInvariant()) {
        throw (New-UsageError "-$Name must be a .ps1, .cmd, .bat or .exe file, not $full")
    }
    if (-not (Test-Path -LiteralPath $full -PathType Leaf)) {
        throw (New-UsageError "-$Name names $full, which does not exist")
    }
    return $full
}

function Invoke-Hook([string]$Path, [string]$What) {
    Write-Line "running the $What hook $Path"
    $program = $Path
    $arguments = @()
    if ($Path.EndsWith('.ps1', [System.StringComparison]::OrdinalIgnoreCase)) {
        # Its own process: the hook gets neither this strict mode nor this script's variables.
        $program = Join-Path $PSHOME 'powershell.exe'
        $arguments = @('-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', $Path)
    }
    # Windows PowerShell turns a native program's stderr into errors, which 'Stop' would
    # make fatal: the exit code decides here, and stderr is only shown.
    $previous = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        $global:LASTEXITCODE = 0
        & $program @arguments 2>&1 | ForEach-Object { Write-Line "  $_" }
        $code = $LASTEXITCODE
    }
    finally {
        $ErrorActionPreference = $previous
    }
    if ($code -ne 0) { throw "the $What hook $Path exited with code $code" }
}

function Get-ServiceNamed([string]$Name) {
    if ([System.Management.Automation.WildcardPattern]::ContainsWildcardCharacters($Name)) {
        throw (New-UsageError "'$Name' is not a service name (no wildcards)")
    }
    $found = @(Get-Service -Name $Name -ErrorAction SilentlyContinue)
    if ($found.Count -ne 1) { throw (New-UsageError "no service is named '$Name' (give its Name, not its DisplayName)") }
    return $found[0]
}

# The running services to stop for `Names`, each after the running services that depend on it.
function Get-StopOrder([string[]]$Names) {
    $order = New-Object System.Collections.Generic.List[string]
    $seen = @{}
    function Add-Running($Service) {
        if ($seen.ContainsKey($Service.Name)) { return }
        $seen[$Service.Name] = $true
        foreach ($dependent in @($Service.DependentServices)) { Add-Running (Get-ServiceNamed $dependent.Name) }
        if ($Service.Status -eq 'Running') { $order.Add($Service.Name) }
    }
    foreach ($name in $Names) {
        $service = Get-ServiceNamed $name
        if ($service.Status -ne 'Running') {
            Write-Line "$($service.Name) is $($service.Status), not running: left as it is"
        }
        Add-Running $service
    }
    foreach ($name in $order) {
        if ($Protected -contains $name) {
            throw (New-UsageError "refusing to stop $name`: the thaw and the guard need it")
        }
    }
    return , $order.ToArray()
}

function Stop-Named([string]$Name, [int]$Timeout) {
    $service = Get-ServiceNamed $Name
    if ($service.Status -ne 'Stopped' -and $service.Status -ne 'StopPending') { $service.Stop() }
    $service.WaitForStatus('Stopped', [TimeSpan]::FromSeconds($Timeout))
    Write-Line "stopped $Name"
}

function Start-Named([string]$Name, [int]$Timeout) {
    $service = Get-ServiceNamed $Name
    if ($service.Status -eq 'Running') {
        Write-Line "$Name was running already"
        return
    }
    if ($service.Status -eq 'StopPending') { $service.WaitForStatus('Stopped', [TimeSpan]::FromSeconds($Timeout)) }
    if ($service.Status -ne 'StartPending') { $service.Start() }
    $service.WaitForStatus('Running', [TimeSpan]::FromSeconds($Timeout))
    Write-Line "started $Name"
}

# -- releasing ---------------------------------------------------------------------------

# Start what a freeze stopped (the last stopped first) and run its thaw hook, each on its
# own: one that fails does not keep the others stopped. What failed stays recorded, for
# the next thaw. The number of failures.
function Undo-Freeze([int]$Timeout) {
    $failed = New-Object System.Collections.Generic.List[string]
    $stopped = @(Read-Lines 'stopped.txt')
    [array]::Reverse($stopped)
    foreach ($name in $stopped) {
        try { Start-Named $name $Timeout }
        catch {
            Write-Problem "cannot start $name`: $($_.Exception.Message)"
            $failed.Insert(0, $name)
        }
    }
    if ($failed.Count -gt 0) { Set-Content -LiteralPath (Get-StatePath 'stopped.txt') -Value $failed.ToArray() }
    else { Remove-Item -LiteralPath (Get-StatePath 'stopped.txt') -Force -ErrorAction SilentlyContinue }
    $hookFailed = 0
    foreach ($recorded in @(Read-Lines 'thaw-hook.txt')) {
        try {
            Invoke-Hook (Resolve-Hook $recorded 'ThawHook') 'thaw'
            Remove-Item -LiteralPath (Get-StatePath 'thaw-hook.txt') -Force
        }
        catch {
            Write-Problem $_.Exception.Message
            $hookFailed = 1
        }
    }
    return $failed.Count + $hookFailed
}

function Clear-Freeze {
    foreach ($name in @('since.txt', 'max-seconds.txt')) {
        Remove-Item -LiteralPath (Get-StatePath $name) -Force -ErrorAction SilentlyContinue
    }
}

# -- the actions -------------------------------------------------------------------------

function Invoke-Freeze {
    $seconds = ConvertTo-Seconds $MaxSeconds 'MaxSeconds' $MaxMaxSeconds
    $timeout = ConvertTo-Seconds $TimeoutSeconds 'TimeoutSeconds' 3600
    $names = @($Services -split ',' | ForEach-Object { $_.Trim() } | Where-Object { $_ -ne '' })
    $freezeWith = Resolve-Hook $FreezeHook 'FreezeHook'
    $thawWith = Resolve-Hook $ThawHook 'ThawHook'
    if ($names.Count -eq 0 -and $freezeWith -eq '') {
        throw (New-UsageError 'Freeze needs -Services, -FreezeHook or both')
    }
    foreach ($name in $names) { Get-ServiceNamed $name | Out-Null }  # each one exists
    Initialize-StateDir
    $lock = Enter-Lock
    try {
        if (Test-Frozen) {
            Write-Line "already frozen since $(Get-Content -LiteralPath (Get-StatePath 'since.txt')): nothing more to do (its guard still runs)"
            return 0
        }
        $order = Get-StopOrder $names
        Remove-Item -LiteralPath (Get-StatePath 'stopped.txt'), (Get-StatePath 'thaw-hook.txt') -Force -ErrorAction SilentlyContinue
        $now = (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')
        Set-Content -LiteralPath (Get-StatePath 'since.txt') -Value $now
        Set-Content -LiteralPath (Get-StatePath 'max-seconds.txt') -Value $seconds
        try {
            Start-Guard $seconds
            if ($thawWith -ne '') { Set-Content -LiteralPath (Get-StatePath 'thaw-hook.txt') -Value $thawWith }
            if ($freezeWith -ne '') { Invoke-Hook $freezeWith 'freeze' }
            foreach ($name in $order) {
                # Recorded before it is stopped: a freeze killed half-way is still undone.
                Add-Content -LiteralPath (Get-StatePath 'stopped.txt') -Value $name
                Stop-Named $name $timeout
            }
        }
        catch {
            Write-Problem "freeze failed: $($_.Exception.Message); undoing what it did"
            $left = Undo-Freeze $timeout
            if ($left -eq 0) {
                Stop-Guard
                Clear-Freeze
            }
            else {
                Write-Problem "$left thing(s) could not be undone: the guard still runs; run -Action Thaw again"
            }
            return 1
        }
        $what = @($order) + @($freezeWith | Where-Object { $_ -ne '' })
        Write-Line "frozen: $($what -join ', '); the guard thaws in $seconds s unless prepost-freeze.ps1 -Action Thaw comes first"
        return 0
    }
    finally {
        $lock.ReleaseMutex()
    }
}

function Invoke-Thaw {
    foreach ($given in @($Services, $FreezeHook, $ThawHook)) {
        if ($given -ne '') { throw (New-UsageError 'Thaw takes no -Services or hooks: it undoes what Freeze recorded') }
    }
    $timeout = ConvertTo-Seconds $TimeoutSeconds 'TimeoutSeconds' 3600
    if (-not (Test-Path -LiteralPath $StateDir)) {
        Write-Line 'nothing to thaw: no freeze is in place (thawed already, or never frozen)'
        return 0
    }
    Initialize-StateDir
    if ($ByGuard) { $script:GuardLog = Get-StatePath 'guard.log' }
    $lock = Enter-Lock
    try {
        $recorded = (Test-Frozen) -or @(Read-Lines 'stopped.txt').Count -gt 0 -or @(Read-Lines 'thaw-hook.txt').Count -gt 0
        if (-not $recorded) {
            if (-not $ByGuard) { Stop-Guard }
            Write-Line 'nothing to thaw: no freeze is in place (thawed already, or never frozen)'
            return 0
        }
        $left = Undo-Freeze $timeout
        if ($left -gt 0) {
            # The guard stays, to try again at its time; a second Thaw tries again now.
            Write-Problem "$left thing(s) could not be thawed; run -Action Thaw again"
            return 1
        }
        if (-not $ByGuard) { Stop-Guard }  # the guard's own task expires: its trigger was once
        Clear-Freeze
        if ($ByGuard) { Write-Line "thawed by the guard: no thaw came within the time Freeze gave" }
        else { Write-Line 'thawed' }
        return 0
    }
    finally {
        $lock.ReleaseMutex()
    }
}

function Show-Status {
    if (-not (Test-Path -LiteralPath $StateDir) -or -not (Test-Frozen)) {
        Write-Line 'nothing frozen'
        return 0
    }
    $since = Get-Content -LiteralPath (Get-StatePath 'since.txt')
    $guardAt = @(Read-Lines 'guard-at.txt')
    $guard = 'no guard registered'
    if (Get-Guard) { $guard = "guard at $($guardAt -join '')" }
    Write-Line "frozen since $since, $guard"
    $stopped = @(Read-Lines 'stopped.txt')
    if ($stopped.Count -gt 0) { Write-Line "stopped services: $($stopped -join ', ')" }
    $hook = @(Read-Lines 'thaw-hook.txt')
    if ($hook.Count -gt 0) { Write-Line "thaw hook: $($hook -join '')" }
    return 0
}

function Invoke-Main {
    if ($Help) {
        Get-Help -Name $PSCommandPath -Full | Out-String | ForEach-Object { [Console]::Out.Write($_) }
        return 0
    }
    if (@($args).Count -gt 0) { throw (New-UsageError "unknown argument(s): $($args -join ' ')") }
    switch ($Action) {
        'Freeze' { return Invoke-Freeze }
        'Thaw' { return Invoke-Thaw }
        'Status' { return Show-Status }
        '' { throw (New-UsageError '-Action Freeze, Thaw or Status?') }
        default { throw (New-UsageError "-Action is Freeze, Thaw or Status, not '$Action'") }
    }
}

$exitCode = 1
try {
    $returned = @(Invoke-Main @args)
    $exitCode = [int]$returned[-1]
}
catch {
    Write-Problem $_.Exception.Message
    if ($_.Exception.Data.Contains($UsageMark)) { $exitCode = 2 } else { $exitCode = 1 }
}
exit $exitCode
