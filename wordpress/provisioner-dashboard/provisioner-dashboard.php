<?php
/**
 * Plugin Name:       Provisioner Dashboard
 * Description:       The [provisioner_dashboard] shortcode: shows the logged-in customer's VPN servers (rebuild, schedule, .ovpn download) from the Provisioner dashboard API.
 * Version:           0.1.0
 * Requires at least: 5.8
 * Requires PHP:      7.4
 * License:           MIT
 * Text Domain:       provisioner-dashboard
 *
 * The shared secret comes ONLY from wp-config.php:
 *
 *     define( 'PROVISIONER_JWT_SECRET', '...the value of api.jwt_secret...' );
 *
 * It is never stored in the options table. The settings page (Settings -> Provisioner) holds
 * the API's public URL and the token audience.
 *
 * @package ProvisionerDashboard
 */

if ( ! defined( 'ABSPATH' ) ) {
	exit;
}

require_once __DIR__ . '/includes/jwt.php';

const PROVISIONER_DASHBOARD_VERSION      = '0.1.0';
const PROVISIONER_DASHBOARD_TOKEN_TTL    = 900;
const PROVISIONER_DASHBOARD_OPT_URL      = 'provisioner_dashboard_api_url';
const PROVISIONER_DASHBOARD_OPT_AUDIENCE = 'provisioner_dashboard_audience';
const PROVISIONER_DASHBOARD_DEFAULT_AUD  = 'provisioner-dashboard';

/**
 * The configured API URL (no trailing slash), or '' when not set.
 *
 * @return string
 */
function provisioner_dashboard_api_url() {
	return untrailingslashit( (string) get_option( PROVISIONER_DASHBOARD_OPT_URL, '' ) );
}

/**
 * The token audience (must equal api.jwt_audience in the Provisioner configuration).
 *
 * @return string
 */
function provisioner_dashboard_audience() {
	$aud = (string) get_option( PROVISIONER_DASHBOARD_OPT_AUDIENCE, PROVISIONER_DASHBOARD_DEFAULT_AUD );
	return '' !== $aud ? $aud : PROVISIONER_DASHBOARD_DEFAULT_AUD;
}

/**
 * Whether wp-config.php defines a usable secret.
 *
 * @return bool
 */
function provisioner_dashboard_has_secret() {
	return defined( 'PROVISIONER_JWT_SECRET' ) && is_string( PROVISIONER_JWT_SECRET ) && strlen( PROVISIONER_JWT_SECRET ) >= 32;
}

/**
 * The origin (scheme://host[:port]) of a URL, for the iframe message check.
 *
 * @param string $url A URL.
 * @return string
 */
function provisioner_dashboard_origin( $url ) {
	$parts = wp_parse_url( $url );
	if ( empty( $parts['scheme'] ) || empty( $parts['host'] ) ) {
		return '';
	}
	$origin = $parts['scheme'] . '://' . $parts['host'];
	if ( ! empty( $parts['port'] ) ) {
		$origin .= ':' . (int) $parts['port'];
	}
	return $origin;
}

/**
 * [provisioner_dashboard]: the dashboard for the logged-in user, or a login link.
 *
 * @return string HTML.
 */
function provisioner_dashboard_shortcode() {
	if ( ! is_user_logged_in() ) {
		$login = wp_login_url( get_permalink() );
		return '<p class="provisioner-dashboard-login"><a href="' . esc_url( $login ) . '">'
			. esc_html__( 'Log in to see your VPN servers.', 'provisioner-dashboard' ) . '</a></p>';
	}
	$api = provisioner_dashboard_api_url();
	if ( '' === $api || ! provisioner_dashboard_has_secret() ) {
		return '<p class="provisioner-dashboard-unconfigured">'
			. esc_html__( 'The VPN dashboard is not configured yet. Please contact support.', 'provisioner-dashboard' )
			. '</p>';
	}
	$user  = wp_get_current_user();
	$token = provisioner_dashboard_mint_token(
		$user->user_email,
		(string) $user->ID,
		provisioner_dashboard_audience(),
		PROVISIONER_JWT_SECRET,
		time(),
		PROVISIONER_DASHBOARD_TOKEN_TTL
	);
	wp_enqueue_script(
		'provisioner-dashboard-embed',
		plugins_url( 'assets/embed.js', __FILE__ ),
		array(),
		PROVISIONER_DASHBOARD_VERSION,
		true
	);
	// The token rides in the fragment: it is never sent to a server or written to access logs.
	$src = $api . '/#token=' . rawurlencode( $token );
	return '<iframe class="provisioner-dashboard" src="' . esc_url( $src ) . '"'
		. ' data-origin="' . esc_attr( provisioner_dashboard_origin( $api ) ) . '"'
		. ' title="' . esc_attr__( 'Your VPN servers', 'provisioner-dashboard' ) . '"'
		. ' referrerpolicy="no-referrer" loading="eager"'
		. ' style="width:100%;min-height:640px;border:0;"></iframe>';
}
add_shortcode( 'provisioner_dashboard', 'provisioner_dashboard_shortcode' );

/**
 * Pages with the dashboard must not be cached: each view mints a personal token.
 */
function provisioner_dashboard_nocache() {
	if ( is_singular() && is_user_logged_in() ) {
		$post = get_post();
		if ( $post && has_shortcode( $post->post_content, 'provisioner_dashboard' ) ) {
			nocache_headers();
		}
	}
}
add_action( 'template_redirect', 'provisioner_dashboard_nocache' );

// --- settings page (Settings -> Provisioner) ------------------------------------------------------

/**
 * Keeps only an http(s) URL without query or fragment.
 *
 * @param mixed $value Submitted value.
 * @return string
 */
function provisioner_dashboard_sanitize_url( $value ) {
	$url = esc_url_raw( trim( (string) $value ), array( 'http', 'https' ) );
	if ( '' === $url ) {
		return '';
	}
	$parts = wp_parse_url( $url );
	if ( empty( $parts['host'] ) || isset( $parts['query'] ) || isset( $parts['fragment'] ) ) {
		add_settings_error( PROVISIONER_DASHBOARD_OPT_URL, 'invalid', __( 'The API URL must be a plain http(s) URL.', 'provisioner-dashboard' ) );
		return provisioner_dashboard_api_url();
	}
	return untrailingslashit( $url );
}

/**
 * Keeps the audience to the characters a JWT audience needs.
 *
 * @param mixed $value Submitted value.
 * @return string
 */
function provisioner_dashboard_sanitize_audience( $value ) {
	$aud = preg_replace( '/[^A-Za-z0-9._:\-]/', '', sanitize_text_field( (string) $value ) );
	return '' !== $aud ? substr( $aud, 0, 128 ) : PROVISIONER_DASHBOARD_DEFAULT_AUD;
}

/**
 * Registers the two options (the Settings API adds the nonce and checks it on save).
 */
function provisioner_dashboard_register_settings() {
	register_setting(
		'provisioner_dashboard',
		PROVISIONER_DASHBOARD_OPT_URL,
		array(
			'type'              => 'string',
			'sanitize_callback' => 'provisioner_dashboard_sanitize_url',
			'default'           => '',
		)
	);
	register_setting(
		'provisioner_dashboard',
		PROVISIONER_DASHBOARD_OPT_AUDIENCE,
		array(
			'type'              => 'string',
			'sanitize_callback' => 'provisioner_dashboard_sanitize_audience',
			'default'           => PROVISIONER_DASHBOARD_DEFAULT_AUD,
		)
	);
}
add_action( 'admin_init', 'provisioner_dashboard_register_settings' );

/**
 * Adds Settings -> Provisioner for administrators.
 */
function provisioner_dashboard_menu() {
	add_options_page(
		__( 'Provisioner', 'provisioner-dashboard' ),
		__( 'Provisioner', 'provisioner-dashboard' ),
		'manage_options',
		'provisioner-dashboard',
		'provisioner_dashboard_settings_page'
	);
}
add_action( 'admin_menu', 'provisioner_dashboard_menu' );

/**
 * Renders the settings page.
 */
function provisioner_dashboard_settings_page() {
	if ( ! current_user_can( 'manage_options' ) ) {
		wp_die( esc_html__( 'You do not have permission to change these settings.', 'provisioner-dashboard' ) );
	}
	?>
	<div class="wrap">
		<h1><?php esc_html_e( 'Provisioner dashboard', 'provisioner-dashboard' ); ?></h1>
		<?php if ( ! provisioner_dashboard_has_secret() ) : ?>
			<div class="notice notice-warning"><p>
				<?php esc_html_e( 'Add define( \'PROVISIONER_JWT_SECRET\', \'...\' ); to wp-config.php with the value of api.jwt_secret (at least 32 characters). It is never stored in the database.', 'provisioner-dashboard' ); ?>
			</p></div>
		<?php endif; ?>
		<form method="post" action="options.php">
			<?php settings_fields( 'provisioner_dashboard' ); ?>
			<table class="form-table" role="presentation">
				<tr>
					<th scope="row"><label for="provisioner-dashboard-url"><?php esc_html_e( 'API URL', 'provisioner-dashboard' ); ?></label></th>
					<td>
						<input type="url" class="regular-text" id="provisioner-dashboard-url"
							name="<?php echo esc_attr( PROVISIONER_DASHBOARD_OPT_URL ); ?>"
							value="<?php echo esc_attr( provisioner_dashboard_api_url() ); ?>"
							placeholder="https://dashboard.example.com">
						<p class="description"><?php esc_html_e( 'The public URL of the Provisioner dashboard API (api.public_url).', 'provisioner-dashboard' ); ?></p>
					</td>
				</tr>
				<tr>
					<th scope="row"><label for="provisioner-dashboard-audience"><?php esc_html_e( 'Token audience', 'provisioner-dashboard' ); ?></label></th>
					<td>
						<input type="text" class="regular-text" id="provisioner-dashboard-audience"
							name="<?php echo esc_attr( PROVISIONER_DASHBOARD_OPT_AUDIENCE ); ?>"
							value="<?php echo esc_attr( provisioner_dashboard_audience() ); ?>">
						<p class="description"><?php esc_html_e( 'Must equal api.jwt_audience in the Provisioner configuration.', 'provisioner-dashboard' ); ?></p>
					</td>
				</tr>
			</table>
			<?php submit_button(); ?>
		</form>
		<p><?php esc_html_e( 'Put the shortcode [provisioner_dashboard] on the customer account page.', 'provisioner-dashboard' ); ?></p>
	</div>
	<?php
}
